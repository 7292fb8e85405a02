import ThorTensor
import ThorExperts

/// Which stack a sublayer belongs to.
public enum Side: String, Sendable, Codable { case encoder, decoder }

/// A sublayer's own state across the steps of incremental decoding, one row per hypothesis
/// (the attention KV cache's sibling for FFN sublayers: e.g. the MoE layer's running prefix sum
/// for the decoder context). Each sublayer defines its own typed state.
public protocol IncrementalState: AnyObject {
    /// Keeps row `rows[i]` of every per-hypothesis tensor as row `i` (beam search).
    func reorder(_ rows: [Int])
}

/// How the rows handed to a sublayer map onto sentences.
///
/// Rows are sentence-major: row `b · length + s` is position `startPosition + s`
/// of sentence `b`. `mask[row]` is 1 for a real token and 0 for padding.
public struct TokenLayout: @unchecked Sendable {
    public var side: Side
    public var batchSize: Int
    /// Positions per sentence in this call (1 for an incremental decoder step).
    public var length: Int
    public var mask: [Float]
    /// 0 for full passes; the position of the step in incremental decoding.
    public var startPosition: Int
    /// Prefix-LM passes: the first `prefixLength` rows of each sentence are the prefix
    /// (`[CLS] source`), the rest the target; 0 otherwise (encoder, decoder, incremental steps).
    public var prefixLength: Int = 0
    /// Present during incremental decoding: the sublayer's own cache.
    public var state: IncrementalState?
    /// Gold task of each sentence, when known (training, and test sets).
    public var taskLabels: [Int]?
    /// The task representation `r` [B, d] of each sentence (SPEC §2.2), computed once per pass by
    /// the model's task level; nil before it ran and in models without one.
    public var taskRepresentation: Tensor?

    public init(side: Side, batchSize: Int, length: Int, mask: [Float], startPosition: Int = 0,
                state: IncrementalState? = nil, taskLabels: [Int]? = nil, taskRepresentation: Tensor? = nil) {
        precondition(mask.count == batchSize * length, "mask needs batchSize·length entries")
        self.side = side; self.batchSize = batchSize; self.length = length; self.mask = mask
        self.startPosition = startPosition; self.state = state; self.taskLabels = taskLabels
        self.taskRepresentation = taskRepresentation
    }

    public var rows: Int { batchSize * length }
    public var isIncremental: Bool { state != nil }
}

/// What a sublayer's backward returns: `∂L/∂x` and, when its forward read the layout's task
/// representation, `∂L/∂r` (the model gathers these from every sublayer for the task level).
public struct SublayerGradients {
    /// `∂L/∂x` [rows, d].
    public var input: Tensor
    /// `∂L/∂r` [B, d], or nil when the forward did not use `r`.
    public var taskRepresentation: Tensor?

    public init(input: Tensor, taskRepresentation: Tensor? = nil) {
        self.input = input; self.taskRepresentation = taskRepresentation
    }
}

/// The FFN sub-block of a Transformer layer: a dense FFN or an MoE layer.
///
/// The Transformer applies LayerNorm, calls `forward` with the normalized
/// states `[rows, d]`, and adds the result to the residual stream. `backward`
/// receives `∂L/∂y` for the last training forward and returns `∂L/∂x` (and `∂L/∂r`),
/// accumulating parameter gradients (an MoE layer also adds the gradients of
/// its own weighted auxiliary losses here).
public protocol FeedForwardSublayer: AnyObject {
    /// Parameters the coordinator owns and optimizes (not remote experts).
    var parameters: [Parameter] { get }
    func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor
    func backward(_ gradOutput: Tensor) throws -> SublayerGradients
    /// A fresh state for incremental decoding of `batchSize` hypotheses, or nil when the
    /// sublayer keeps none (the default).
    func makeIncrementalState(batchSize: Int) -> IncrementalState?
}

extension FeedForwardSublayer {
    public func makeIncrementalState(batchSize: Int) -> IncrementalState? { nil }
}

/// The dense FFN sublayer (dense layers and shared experts): the same
/// `FeedForwardWeights` and kernel as a routed `Expert`.
public final class DenseFeedForward: FeedForwardSublayer {
    public let weights: FeedForwardWeights
    public var modelDim: Int { weights.modelDim }
    public var hiddenDim: Int { weights.hiddenDim }
    public var activation: Activation { weights.activation }
    public var w1: Parameter { weights.w1 }
    public var b1: Parameter { weights.b1 }
    public var w2: Parameter { weights.w2 }
    public var b2: Parameter { weights.b2 }
    private var saved: FeedForwardActivations?

    /// `name` prefixes the parameter names (e.g. `encoder.layers.0.ffn`).
    public init(name: String, modelDim d: Int, hiddenDim f: Int, activation: Activation, rng: inout RandomGenerator) {
        weights = FeedForwardWeights(name: name, modelDim: d, hiddenDim: f, activation: activation, rng: &rng)
    }

    public var parameters: [Parameter] { weights.parameters }

    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        let (y, kept) = weights.forward(x, keep: training)
        saved = kept
        return y
    }

    public func backward(_ gradOutput: Tensor) throws -> SublayerGradients {
        guard let s = saved else { throw ExpertBackendError.noPendingForward(layer: -1) }
        let dx = weights.backward(gradOutput, s)
        saved = nil
        return SublayerGradients(input: dx)
    }
}
