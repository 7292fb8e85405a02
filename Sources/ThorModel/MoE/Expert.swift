import ThorTensor

/// What every routed expert of a model looks like; the same on the
/// coordinator and on every worker, so a worker can build any expert.
public struct ExpertSpec: Sendable, Codable, Equatable {
    /// Model width `d`.
    public var modelDim: Int
    /// Hidden width `d_ff`.
    public var hiddenDim: Int
    public var activation: Activation
    /// Seed from which each expert's initial weights derive (with its layer and id),
    /// so an expert starts the same wherever it is placed.
    public var seed: UInt64
    public var adam: AdamSettings

    public init(modelDim: Int, hiddenDim: Int, activation: Activation, seed: UInt64, adam: AdamSettings = AdamSettings()) {
        self.modelDim = modelDim; self.hiddenDim = hiddenDim; self.activation = activation
        self.seed = seed; self.adam = adam
    }
}

/// Identifies one routed expert: MoE layer ordinal (encoder MoE layers first,
/// then decoder ones, counting from 0) and expert id within that layer.
public struct ExpertKey: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var layer: Int
    public var expert: Int
    public init(layer: Int, expert: Int) { self.layer = layer; self.expert = expert }
    public static func < (a: ExpertKey, b: ExpertKey) -> Bool {
        (a.layer, a.expert) < (b.layer, b.expert)
    }
    public var description: String { "L\(layer)E\(expert)" }
    /// Prefix of this expert's tensor names in checkpoints.
    public var parameterPrefix: String { "moe.\(layer).experts.\(expert)" }
}

/// One FFN expert: its parameters (with gradients and Adam moments).
public final class Expert: @unchecked Sendable {
    public let key: ExpertKey
    public let spec: ExpertSpec
    public let w1: Parameter, b1: Parameter, w2: Parameter, b2: Parameter

    /// Creates the expert with its deterministic initial weights
    /// (uniform Xavier for the matrices, zero biases).
    public init(key: ExpertKey, spec: ExpertSpec) {
        self.key = key
        self.spec = spec
        let d = spec.modelDim, f = spec.hiddenDim
        let f1 = spec.activation.firstProjectionWidth(dFF: f)
        let p = key.parameterPrefix
        w1 = Parameter(name: "\(p).w1", shape: [d, f1])
        b1 = Parameter(name: "\(p).b1", shape: [f1])
        w2 = Parameter(name: "\(p).w2", shape: [f, d])
        b2 = Parameter(name: "\(p).b2", shape: [d])
        var rng = RandomGenerator(seed: spec.seed, stream: [0xE0, UInt64(key.layer), UInt64(key.expert)])
        rng.fillUniform(w1.value.pointer, count: w1.count, limit: Float(6.0 / Double(d + f1)).squareRoot())
        rng.fillUniform(w2.value.pointer, count: w2.count, limit: Float(6.0 / Double(f + d)).squareRoot())
    }

    /// Parameters in their fixed order.
    public var parameters: [Parameter] { [w1, b1, w2, b2] }

    /// Σ of squared gradient entries, in parameter order.
    public func squaredGradientNorm() -> Double {
        parameters.reduce(0.0) { $0 + Kernels.sumOfSquares($1.grad.pointer, count: $1.count) }
    }
}

/// Activations an expert keeps between forward and backward for one batch.
public struct ExpertActivations: @unchecked Sendable {
    public let input: Tensor      // [n, d]
    public let preActivation: Tensor  // [n, f1]
    public let hidden: Tensor     // [n, dFF]
}

extension Expert {
    /// Runs `input` [n, d] through the expert; returns the output [n, d] and,
    /// when `keep`, what backward needs.
    public func forward(_ input: Tensor, keep: Bool) -> (Tensor, ExpertActivations?) {
        let n = input.rows, d = spec.modelDim, f = spec.hiddenDim
        precondition(input.columns == d, "expert \(key) expects width \(d), got \(input.columns)")
        let f1 = spec.activation.firstProjectionWidth(dFF: f)
        let h = Tensor(shape: [n, f1]), a = Tensor(shape: [n, f]), y = Tensor(shape: [n, d])
        FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: input.pointer,
                            w1: w1.value.pointer, b1: b1.value.pointer, w2: w2.value.pointer, b2: b2.value.pointer,
                            n: n, d: d, dFF: f, activation: spec.activation)
        return (y, keep ? ExpertActivations(input: input, preActivation: h, hidden: a) : nil)
    }

    /// Backward for one batch: accumulates parameter gradients, returns ∂L/∂input [n, d].
    public func backward(_ gradOutput: Tensor, _ saved: ExpertActivations) -> Tensor {
        let n = saved.input.rows, d = spec.modelDim, f = spec.hiddenDim
        precondition(gradOutput.rows == n && gradOutput.columns == d,
                     "expert \(key): gradient \(gradOutput.shape) does not match the forward batch [\(n), \(d)]")
        let f1 = spec.activation.firstProjectionWidth(dFF: f)
        let dx = Tensor(shape: [n, d]), dh = Tensor(shape: [n, f1]), da = Tensor(shape: [n, f])
        FeedForward.backward(dx: dx.pointer, dw1: w1.grad.pointer, db1: b1.grad.pointer,
                             dw2: w2.grad.pointer, db2: b2.grad.pointer,
                             dy: gradOutput.pointer, h: saved.preActivation.pointer, a: saved.hidden.pointer,
                             x: saved.input.pointer, w1: w1.value.pointer, w2: w2.value.pointer,
                             dh: dh.pointer, da: da.pointer, n: n, d: d, dFF: f, activation: spec.activation)
        return dx
    }
}
