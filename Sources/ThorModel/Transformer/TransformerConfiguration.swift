import ThorExperts

/// Shape of the encoder-decoder Transformer (the `model` section of a config file).
///
/// The dense model and every MoE variant share it; which layers are MoE and how
/// they route is the routing configuration's business.
public struct TransformerConfiguration: Codable, Sendable, Equatable {
    /// Joint source/target vocabulary size (embeddings are tied).
    public var vocabularySize: Int
    /// Model width `d`.
    public var modelDim: Int = 64
    /// FFN / expert hidden width `d_ff`.
    public var hiddenDim: Int = 128
    /// Attention heads (`modelDim` must be a multiple).
    public var heads: Int = 4
    public var encoderLayers: Int = 2
    public var decoderLayers: Int = 2
    public var activation: Activation = .relu
    /// Dropout on residual branches and embeddings (SPEC: 0.1).
    public var dropout: Float = 0.1
    /// Dropout on attention weights.
    public var attentionDropout: Float = 0.1
    /// Longest sequence the positional table covers.
    public var maxPositions: Int = 256
    /// Padding token id.
    public var padID: Int = 0

    public init(vocabularySize: Int, modelDim: Int = 64, hiddenDim: Int = 128, heads: Int = 4,
                encoderLayers: Int = 2, decoderLayers: Int = 2, activation: Activation = .relu,
                dropout: Float = 0.1, attentionDropout: Float = 0.1, maxPositions: Int = 256, padID: Int = 0) {
        self.vocabularySize = vocabularySize; self.modelDim = modelDim; self.hiddenDim = hiddenDim
        self.heads = heads; self.encoderLayers = encoderLayers; self.decoderLayers = decoderLayers
        self.activation = activation; self.dropout = dropout; self.attentionDropout = attentionDropout
        self.maxPositions = maxPositions; self.padID = padID
    }
}
