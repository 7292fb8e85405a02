import ThorTensor

/// What training, evaluation and translation need of a model, whatever its architecture
/// (`model.architecture`): the encoder-decoder `Transformer` and the decoder-only `PrefixLMTransformer`.
public protocol TranslationNetwork: AnyObject {
    var configuration: TransformerConfiguration { get }
    /// Every coordinator-side parameter, in a fixed order (checkpoints and the optimizer use it).
    var parameters: [Parameter] { get }
    /// The dropout generator's state (checkpointed).
    var dropoutState: UInt64 { get set }
    /// Label smoothing ε of `L_mt`.
    var labelSmoothing: Float { get set }
    /// Logits `[B·T, V]` of the target positions of the last forward.
    var lastLogits: Tensor? { get }
    func zeroGradients()
    /// `L_mt` of `batch`; with `training`, dropout on and activations kept for `backward`.
    @discardableResult
    func forward(_ batch: Seq2SeqBatch, training: Bool) throws -> CrossEntropyResult
    /// Gradients of the last training forward (`lossScale · L_mt` plus the MoE auxiliary losses).
    func backward(lossScale: Float) throws
    /// Translates the sources of `batch` (greedy for `beamSize` 1, else beam search); token ids without BOS/EOS.
    func translate(_ batch: Seq2SeqBatch, beamSize: Int, lengthPenalty: Float, bos: Int32, eos: Int32,
                   maxLength: Int) throws -> [[Int32]]
}

/// Builds the network `configuration.architecture` names.
public enum TranslationNetworks {
    public static func make(configuration c: TransformerConfiguration, seed: UInt64, taskLevel: TaskLevel?,
                            makeFeedForward: (Side, Int) throws -> FeedForwardSublayer?) throws -> TranslationNetwork {
        switch c.architecture {
        case .encoderDecoder:
            return try Transformer(configuration: c, seed: seed, taskLevel: taskLevel, makeFeedForward: makeFeedForward)
        case .decoderOnly:
            return try PrefixLMTransformer(configuration: c, seed: seed, taskLevel: taskLevel, makeFeedForward: makeFeedForward)
        }
    }
}

extension Transformer: TranslationNetwork {
    public func translate(_ batch: Seq2SeqBatch, beamSize: Int, lengthPenalty: Float, bos: Int32, eos: Int32,
                          maxLength: Int) throws -> [[Int32]] {
        let encoded = try encode(batch)
        if beamSize <= 1 { return try greedyDecode(encoded, bos: bos, eos: eos, maxLength: maxLength) }
        return try beamSearch(encoded, beamSize: beamSize, lengthPenalty: lengthPenalty, bos: bos, eos: eos, maxLength: maxLength)
    }
}

extension PrefixLMTransformer: TranslationNetwork {
    public func translate(_ batch: Seq2SeqBatch, beamSize: Int, lengthPenalty: Float, bos: Int32, eos: Int32,
                          maxLength: Int) throws -> [[Int32]] {
        if beamSize <= 1 { return try greedyDecode(batch, bos: bos, eos: eos, maxLength: maxLength) }
        return try beamSearch(batch, beamSize: beamSize, lengthPenalty: lengthPenalty, bos: bos, eos: eos, maxLength: maxLength)
    }
}
