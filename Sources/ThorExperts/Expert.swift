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
    /// The FFN's parameters, named `moe.L.experts.E.{w1,b1,w2,b2}`.
    public let weights: FeedForwardWeights
    public var w1: Parameter { weights.w1 }
    public var b1: Parameter { weights.b1 }
    public var w2: Parameter { weights.w2 }
    public var b2: Parameter { weights.b2 }

    /// Creates the expert with its deterministic initial weights, drawn from a
    /// stream of its own (seed, layer, id), so it starts the same wherever it is placed.
    public init(key: ExpertKey, spec: ExpertSpec) {
        self.key = key
        self.spec = spec
        var rng = RandomGenerator(seed: spec.seed, stream: [0xE0, UInt64(key.layer), UInt64(key.expert)])
        weights = FeedForwardWeights(name: key.parameterPrefix, modelDim: spec.modelDim, hiddenDim: spec.hiddenDim,
                                     activation: spec.activation, rng: &rng)
    }

    /// Parameters in their fixed order.
    public var parameters: [Parameter] { weights.parameters }

    /// Σ of squared gradient entries, in parameter order.
    public func squaredGradientNorm() -> Double {
        parameters.reduce(0.0) { $0 + Kernels.sumOfSquares($1.grad.pointer, count: $1.count) }
    }

    /// Runs `input` [n, d] through the expert; returns the output [n, d] and,
    /// when `keep`, what backward needs.
    public func forward(_ input: Tensor, keep: Bool) -> (Tensor, FeedForwardActivations?) {
        weights.forward(input, keep: keep)
    }

    /// Backward for one batch: accumulates parameter gradients, returns ∂L/∂input [n, d].
    public func backward(_ gradOutput: Tensor, _ saved: FeedForwardActivations) -> Tensor {
        weights.backward(gradOutput, saved)
    }
}
