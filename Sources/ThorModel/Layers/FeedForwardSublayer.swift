import ThorTensor
import ThorExperts

/// Which stack a sublayer belongs to.
public enum Side: String, Sendable, Codable { case encoder, decoder }

/// Per-sublayer storage that lives across the steps of incremental decoding
/// (the attention KV cache's sibling for FFN sublayers: e.g. the MoE layer's
/// running prefix sum for the decoder context).
public final class IncrementalState: @unchecked Sendable {
    public var tensors: [String: Tensor] = [:]
    public init() {}
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
    /// Present during incremental decoding: the sublayer's own cache.
    public var state: IncrementalState?
    /// Gold task of each sentence, when known (training, and test sets).
    public var taskLabels: [Int]?

    public init(side: Side, batchSize: Int, length: Int, mask: [Float], startPosition: Int = 0,
                state: IncrementalState? = nil, taskLabels: [Int]? = nil) {
        precondition(mask.count == batchSize * length, "mask needs batchSize·length entries")
        self.side = side; self.batchSize = batchSize; self.length = length; self.mask = mask
        self.startPosition = startPosition; self.state = state; self.taskLabels = taskLabels
    }

    public var rows: Int { batchSize * length }
    public var isIncremental: Bool { state != nil }
}

/// The FFN sub-block of a Transformer layer: a dense FFN or an MoE layer.
///
/// The Transformer applies LayerNorm, calls `forward` with the normalized
/// states `[rows, d]`, and adds the result to the residual stream. `backward`
/// receives `∂L/∂y` for the last training forward and returns `∂L/∂x`,
/// accumulating parameter gradients (an MoE layer also adds the gradients of
/// its own weighted auxiliary losses here).
public protocol FeedForwardSublayer: AnyObject {
    /// Parameters the coordinator owns and optimizes (not remote experts).
    var parameters: [Parameter] { get }
    func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor
    func backward(_ gradOutput: Tensor) throws -> Tensor
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

    public func backward(_ gradOutput: Tensor) throws -> Tensor {
        guard let s = saved else { throw ExpertBackendError.noPendingForward(layer: -1) }
        let dx = weights.backward(gradOutput, s)
        saved = nil
        return dx
    }
}
