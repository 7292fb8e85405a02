/// A named trainable tensor with its gradient and Adam moments.
///
/// Names are stable, dot-separated paths (`encoder.layers.0.attention.wq`):
/// checkpoints use them as safetensors keys and the optimizer visits
/// parameters in the order their owner lists them.
public final class Parameter: @unchecked Sendable {
    public let name: String
    public let value: Tensor
    public let grad: Tensor
    /// Adam first moment.
    public let m: Tensor
    /// Adam second moment.
    public let v: Tensor

    public init(name: String, shape: [Int]) {
        self.name = name
        value = Tensor(shape: shape)
        grad = Tensor(shape: shape)
        m = Tensor(shape: shape)
        v = Tensor(shape: shape)
    }

    public var count: Int { value.count }
    public var shape: [Int] { value.shape }
}

/// Adam hyper-parameters (SPEC §3: β = (0.9, 0.98)).
public struct AdamSettings: Sendable, Equatable, Codable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.98
    public var epsilon: Float = 1e-8
    public var weightDecay: Float = 0
    public init(beta1: Float = 0.9, beta2: Float = 0.98, epsilon: Float = 1e-8, weightDecay: Float = 0) {
        self.beta1 = beta1; self.beta2 = beta2; self.epsilon = epsilon; self.weightDecay = weightDecay
    }
}

public enum Adam {
    /// One Adam step on `p` with gradient `clipScale · p.grad`; `step` counts from 1.
    /// Bias correction as in Kingma & Ba; decoupled weight decay (AdamW) when non-zero.
    /// Zeroes the gradient afterwards.
    public static func update(_ p: Parameter, learningRate lr: Float, clipScale: Float, step: Int, settings s: AdamSettings) {
        precondition(step >= 1, "Adam step counts from 1")
        let b1 = s.beta1, b2 = s.beta2
        let c1 = 1 - Float(_pow(Double(b1), Double(step)))
        let c2 = 1 - Float(_pow(Double(b2), Double(step)))
        let w = p.value.pointer, g = p.grad.pointer, m = p.m.pointer, v = p.v.pointer
        let decay = s.weightDecay, eps = s.epsilon
        for i in 0..<p.count {
            let gi = g[i] * clipScale
            let mi = b1 * m[i] + (1 - b1) * gi
            let vi = b2 * v[i] + (1 - b2) * gi * gi
            m[i] = mi; v[i] = vi
            let mhat = mi / c1
            let vhat = vi / c2
            w[i] -= lr * (mhat / (vhat.squareRoot() + eps) + decay * w[i])
        }
        p.grad.zero()
    }

    /// Learning rate at `step` (from 1) for the inverse-square-root schedule
    /// with linear warm-up: `peak · min(step/warmup, sqrt(warmup/step))`.
    public static func inverseSquareRootRate(peak: Float, warmup: Int, step: Int) -> Float {
        let s = Float(max(step, 1))
        let w = Float(max(warmup, 1))
        return peak * min(s / w, (w / s).squareRoot())
    }

    /// Clip factor for global-norm clipping: `min(1, maxNorm / (norm + 1e-6))`;
    /// 1 when `maxNorm <= 0` (clipping off).
    public static func clipScale(squaredNorm: Double, maxNorm: Float) -> Float {
        guard maxNorm > 0 else { return 1 }
        let norm = squaredNorm.squareRoot()
        return Float(min(1.0, Double(maxNorm) / (norm + 1e-6)))
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _pow(_ a: Double, _ b: Double) -> Double { Glibc.pow(a, b) }
#else
import Darwin
@inline(__always) func _pow(_ a: Double, _ b: Double) -> Double { Darwin.pow(a, b) }
#endif
