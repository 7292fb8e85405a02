import CThorKernels

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
    /// Zeroes the gradient afterwards (in the same pass).
    ///
    /// Elementwise: every element goes through the same IEEE operations (no FMA, the same
    /// order) whatever vector lane or piece it falls in, so the result has the same bits for
    /// any `threads` (the elements are split into contiguous pieces).
    public static func update(_ p: Parameter, learningRate lr: Float, clipScale: Float, step: Int,
                              settings s: AdamSettings, threads: Int = 1) {
        update([p], learningRate: lr, clipScale: clipScale, step: step, settings: s, threads: threads)
    }

    /// One Adam step on every parameter of `parameters`, in one parallel region: each parameter
    /// is cut into pieces of at most `piece` elements and the pieces of all of them are handed
    /// out to `threads` threads from one counter (one fork and join per step instead of one per
    /// parameter, which costs a scheduler slice each on a busy machine). Same bits as
    /// `update(_:…)` on each parameter in turn, for any `threads` (elementwise).
    public static func update(_ parameters: [Parameter], learningRate lr: Float, clipScale: Float, step: Int,
                              settings s: AdamSettings, threads: Int = 1, piece: Int = 1 << 15) {
        precondition(step >= 1, "Adam step counts from 1")
        precondition(piece >= 8, "pieces of at least 8 elements")
        let c1 = 1 - Float(_pow(Double(s.beta1), Double(step)))
        let c2 = 1 - Float(_pow(Double(s.beta2), Double(step)))
        let k = AdamConstants(lr: lr, clip: clipScale, b1: s.beta1, b2: s.beta2, c1: c1, c2: c2,
                              eps: s.epsilon, decay: s.weightDecay)
        var pieces: [(w: UnsafeMutablePointer<Float>, g: UnsafeMutablePointer<Float>, m: UnsafeMutablePointer<Float>,
                      v: UnsafeMutablePointer<Float>, range: Range<Int>)] = []
        for p in parameters {
            var lo = 0
            while lo < p.count {
                let hi = min(p.count, lo + piece)
                pieces.append((p.value.pointer, p.grad.pointer, p.m.pointer, p.v.pointer, lo..<hi))
                lo = hi
            }
        }
        nonisolated(unsafe) let work = pieces
        _ = withExtendedLifetime(parameters) {
            Parallel.map(work.count, threads: work.count > 1 ? threads : 1) { i in
                let q = work[i]
                update(w: q.w, g: q.g, m: q.m, v: q.v, range: q.range, k)
            }
        }
    }

    /// What every element's update uses.
    @usableFromInline struct AdamConstants {
        @usableFromInline let lr: Float, clip: Float, b1: Float, b2: Float, c1: Float, c2: Float, eps: Float, decay: Float
        @usableFromInline init(lr: Float, clip: Float, b1: Float, b2: Float, c1: Float, c2: Float, eps: Float, decay: Float) {
            self.lr = lr; self.clip = clip; self.b1 = b1; self.b2 = b2; self.c1 = c1; self.c2 = c2
            self.eps = eps; self.decay = decay
        }
    }

    /// Adam on elements `range`, in C (`thor_adam_update`, CThorKernels): Swift lowers
    /// `SIMD8<Float>.squareRoot()` to one scalar `sqrtss` per lane, the C loop compiles to
    /// vector square roots and divisions. Each element goes through the same correctly rounded
    /// IEEE operations in the same order (no fused multiply-add), so the bits are those of the
    /// scalar definition.
    static func update(w: UnsafeMutablePointer<Float>, g: UnsafeMutablePointer<Float>,
                       m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>,
                       range: Range<Int>, _ k: AdamConstants) {
        let o = range.lowerBound
        thor_adam_update(w + o, g + o, m + o, v + o, range.count,
                         k.lr, k.clip, k.b1, k.b2, k.c1, k.c2, k.eps, k.decay)
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
