import ThorTensor

/// The four parameters of one position-wise FFN (`FeedForward`), allocated and
/// initialized in one place for every FFN of a model: dense layers, shared
/// experts (`DenseFeedForward` in ThorModel) and routed experts (`Expert`).
///
/// Shapes (`f1 = activation.firstProjectionWidth(dFF)`):
///   w1 [d, f1], b1 [f1], w2 [dFF, d], b2 [d].
/// Initialization: uniform Xavier for w1 then w2 (two draws from `rng`, in that
/// order), zero biases.
public final class FeedForwardWeights: @unchecked Sendable {
    /// Prefix of the parameter names (`<name>.w1`, …).
    public let name: String
    public let modelDim: Int, hiddenDim: Int, activation: Activation
    public let w1: Parameter, b1: Parameter, w2: Parameter, b2: Parameter

    public init(name: String, modelDim d: Int, hiddenDim f: Int, activation: Activation, rng: inout RandomGenerator) {
        self.name = name
        modelDim = d; hiddenDim = f; self.activation = activation
        let f1 = activation.firstProjectionWidth(dFF: f)
        w1 = Parameter(name: "\(name).w1", shape: [d, f1])
        b1 = Parameter(name: "\(name).b1", shape: [f1])
        w2 = Parameter(name: "\(name).w2", shape: [f, d])
        b2 = Parameter(name: "\(name).b2", shape: [d])
        rng.fillUniform(w1.value.pointer, count: w1.count, limit: Float(6.0 / Double(d + f1)).squareRoot())
        rng.fillUniform(w2.value.pointer, count: w2.count, limit: Float(6.0 / Double(f + d)).squareRoot())
    }

    /// Parameters in their fixed order.
    public var parameters: [Parameter] { [w1, b1, w2, b2] }

    /// Runs `input` [n, d] through the FFN; returns the output [n, d] and,
    /// when `keep`, what `backward` needs.
    public func forward(_ input: Tensor, keep: Bool) -> (Tensor, FeedForwardActivations?) {
        let n = input.rows, d = modelDim, f = hiddenDim
        precondition(input.columns == d, "\(name) expects width \(d), got \(input.columns)")
        let h = Tensor(shape: [n, activation.firstProjectionWidth(dFF: f)]), a = Tensor(shape: [n, f])
        let y = Tensor(shape: [n, d])
        FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: input.pointer,
                            w1: w1.value.pointer, b1: b1.value.pointer, w2: w2.value.pointer, b2: b2.value.pointer,
                            n: n, d: d, dFF: f, activation: activation)
        return (y, keep ? FeedForwardActivations(input: input, preActivation: h, hidden: a) : nil)
    }

    /// Backward for the batch `saved` was kept for: accumulates parameter
    /// gradients, returns ∂L/∂input [n, d].
    public func backward(_ gradOutput: Tensor, _ saved: FeedForwardActivations) -> Tensor {
        let n = saved.input.rows, d = modelDim, f = hiddenDim
        precondition(gradOutput.rows == n && gradOutput.columns == d,
                     "\(name): gradient \(gradOutput.shape) does not match the forward batch [\(n), \(d)]")
        let dx = Tensor(shape: [n, d])
        let dh = Tensor(shape: saved.preActivation.shape), da = Tensor(shape: saved.hidden.shape)
        FeedForward.backward(dx: dx.pointer, dw1: w1.grad.pointer, db1: b1.grad.pointer,
                             dw2: w2.grad.pointer, db2: b2.grad.pointer,
                             dy: gradOutput.pointer, h: saved.preActivation.pointer, a: saved.hidden.pointer,
                             x: saved.input.pointer, w1: w1.value.pointer, w2: w2.value.pointer,
                             dh: dh.pointer, da: da.pointer, n: n, d: d, dFF: f, activation: activation)
        return dx
    }
}

/// Activations an FFN keeps between forward and backward for one batch.
public struct FeedForwardActivations: @unchecked Sendable {
    public let input: Tensor          // [n, d]
    public let preActivation: Tensor  // [n, f1]
    public let hidden: Tensor         // [n, dFF]
}
