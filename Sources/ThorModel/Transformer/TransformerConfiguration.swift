import ThorTensor
import ThorExperts

/// Which Transformer the model is (SPEC §1): the encoder-decoder (the default) or the
/// decoder-only prefix-LM (bidirectional over `[CLS] source`, causal over the target).
public enum Architecture: String, Codable, Sendable, CaseIterable {
    case encoderDecoder = "encoder-decoder"
    case decoderOnly = "decoder-only"
}

/// Shape of the Transformer (the `model` section of a config file).
///
/// The dense model and every MoE variant share it; which layers are MoE and how
/// they route is the routing configuration's business. Defaults: the property initializers (the only place they are written).
public struct TransformerConfiguration: ConfigurationSection {
    /// Joint source/target vocabulary size (embeddings are tied; 0: from the BPE vocabulary).
    public var vocabularySize: Int = 0
    /// `encoder-decoder` (default) or `decoder-only` (prefix-LM with `encoder_layers + decoder_layers`
    /// layers in one stack; see docs/architecture.md).
    public var architecture: Architecture = .encoderDecoder
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

    public init() {}

    /// The defaults with some fields replaced.
    public init(vocabularySize: Int = TransformerConfiguration().vocabularySize,
                modelDim: Int = TransformerConfiguration().modelDim,
                hiddenDim: Int = TransformerConfiguration().hiddenDim, heads: Int = TransformerConfiguration().heads,
                encoderLayers: Int = TransformerConfiguration().encoderLayers,
                decoderLayers: Int = TransformerConfiguration().decoderLayers,
                activation: Activation = TransformerConfiguration().activation,
                dropout: Float = TransformerConfiguration().dropout,
                attentionDropout: Float = TransformerConfiguration().attentionDropout,
                maxPositions: Int = TransformerConfiguration().maxPositions,
                padID: Int = TransformerConfiguration().padID) {
        self.vocabularySize = vocabularySize; self.modelDim = modelDim; self.hiddenDim = hiddenDim
        self.heads = heads; self.encoderLayers = encoderLayers; self.decoderLayers = decoderLayers
        self.activation = activation; self.dropout = dropout; self.attentionDropout = attentionDropout
        self.maxPositions = maxPositions; self.padID = padID
    }

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case vocabularySize = "vocabulary_size", architecture, modelDim = "model_dim", hiddenDim = "hidden_dim", heads
        case encoderLayers = "encoder_layers", decoderLayers = "decoder_layers", activation, dropout
        case attentionDropout = "attention_dropout", maxPositions = "max_positions", padID = "pad_id"
    }

    /// Layers of the decoder-only stack: `encoder_layers + decoder_layers` (the encoder-decoder's depth).
    public var prefixLMLayers: Int { encoderLayers + decoderLayers }

    public func validate(path: String = "model") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        try Check.require(vocabularySize >= 0, p(.vocabularySize), "must be ≥ 0 (0: from the BPE vocabulary), got \(vocabularySize)")
        try Check.require(modelDim >= 1, p(.modelDim), "must be ≥ 1, got \(modelDim)")
        try Check.require(modelDim % 2 == 0, p(.modelDim), "must be even (sinusoidal positions), got \(modelDim)")
        try Check.require(hiddenDim >= 1, p(.hiddenDim), "must be ≥ 1, got \(hiddenDim)")
        try Check.require(heads >= 1, p(.heads), "must be ≥ 1, got \(heads)")
        try Check.require(modelDim % heads == 0, p(.heads), "model_dim (\(modelDim)) must be divisible by heads; got \(heads)")
        try Check.require(encoderLayers >= 1, p(.encoderLayers), "must be ≥ 1, got \(encoderLayers)")
        try Check.require(decoderLayers >= 1, p(.decoderLayers), "must be ≥ 1, got \(decoderLayers)")
        try Check.require(dropout >= 0 && dropout < 1, p(.dropout), "must be in [0, 1), got \(dropout)")
        try Check.require(attentionDropout >= 0 && attentionDropout < 1, p(.attentionDropout),
                          "must be in [0, 1), got \(attentionDropout)")
        try Check.require(maxPositions >= 2, p(.maxPositions), "must be ≥ 2, got \(maxPositions)")
        try Check.require(padID >= 0 && (vocabularySize == 0 || padID < vocabularySize), p(.padID),
                          "must be in 0..<vocabulary_size, got \(padID)")
    }
}
