import ThorTensor

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

/// The dense FFN sublayer.
public final class DenseFeedForward: FeedForwardSublayer {
    public let modelDim: Int, hiddenDim: Int, activation: Activation
    public let w1: Parameter, b1: Parameter, w2: Parameter, b2: Parameter
    private var saved: (x: Tensor, h: Tensor, a: Tensor)?

    /// `name` prefixes the parameter names (e.g. `encoder.layers.0.ffn`).
    public init(name: String, modelDim d: Int, hiddenDim f: Int, activation: Activation, rng: inout RandomGenerator) {
        modelDim = d; hiddenDim = f; self.activation = activation
        let f1 = activation.firstProjectionWidth(dFF: f)
        w1 = Parameter(name: "\(name).w1", shape: [d, f1])
        b1 = Parameter(name: "\(name).b1", shape: [f1])
        w2 = Parameter(name: "\(name).w2", shape: [f, d])
        b2 = Parameter(name: "\(name).b2", shape: [d])
        rng.fillUniform(w1.value.pointer, count: w1.count, limit: Float(6.0 / Double(d + f1)).squareRoot())
        rng.fillUniform(w2.value.pointer, count: w2.count, limit: Float(6.0 / Double(f + d)).squareRoot())
    }

    public var parameters: [Parameter] { [w1, b1, w2, b2] }

    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        let n = x.rows, d = modelDim, f = hiddenDim
        let h = Tensor(shape: [n, activation.firstProjectionWidth(dFF: f)]), a = Tensor(shape: [n, f])
        let y = Tensor(shape: [n, d])
        FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: x.pointer,
                            w1: w1.value.pointer, b1: b1.value.pointer, w2: w2.value.pointer, b2: b2.value.pointer,
                            n: n, d: d, dFF: f, activation: activation)
        saved = training ? (x, h, a) : nil
        return y
    }

    public func backward(_ gradOutput: Tensor) throws -> SublayerGradients {
        guard let s = saved else { throw ExpertBackendError.noPendingForward(layer: -1) }
        let n = s.x.rows, d = modelDim, f = hiddenDim
        let dx = Tensor(shape: [n, d])
        let dh = Tensor(shape: s.h.shape), da = Tensor(shape: s.a.shape)
        FeedForward.backward(dx: dx.pointer, dw1: w1.grad.pointer, db1: b1.grad.pointer,
                             dw2: w2.grad.pointer, db2: b2.grad.pointer,
                             dy: gradOutput.pointer, h: s.h.pointer, a: s.a.pointer, x: s.x.pointer,
                             w1: w1.value.pointer, w2: w2.value.pointer, dh: dh.pointer, da: da.pointer,
                             n: n, d: d, dFF: f, activation: activation)
        saved = nil
        return SublayerGradients(input: dx)
    }
}
