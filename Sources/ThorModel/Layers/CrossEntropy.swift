import ThorTensor
import CThorKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Result of the translation loss `L_mt` over one batch.
public struct CrossEntropyResult: Sendable, Equatable {
    /// Mean over non-pad target tokens of the label-smoothed cross-entropy.
    public var loss: Float
    /// Sum over non-pad tokens (Double-accumulated), `loss · tokenCount`.
    public var lossSum: Double
    /// Non-pad target tokens.
    public var tokenCount: Int
    /// Sum over non-pad tokens of the plain (unsmoothed) negative log-likelihood.
    public var nllSum: Double
    public init(loss: Float, lossSum: Double, tokenCount: Int, nllSum: Double) {
        self.loss = loss; self.lossSum = lossSum; self.tokenCount = tokenCount; self.nllSum = nllSum
    }
}

/// Label-smoothed cross-entropy (SPEC §3, PyTorch's definition): target
/// `t = (1 − ε)·onehot(y) + ε/V` over the whole vocabulary,
/// `loss_r = −Σ_v t_v · log_softmax(logits_r)_v`, mean over rows with `mask[r] = 1`.
///
/// Shapes: logits/dlogits [n, V], targets [n] (Int32), mask [n] (1 real, 0 pad).
public enum CrossEntropy {
    public static func forward(
        logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, mask: UnsafePointer<Float>,
        n: Int, vocabularySize v: Int, smoothing eps: Float
    ) -> CrossEntropyResult {
        var total = 0.0, nll = 0.0, count = 0
        // One row of exponentials at a time (`thor_expf_shifted`: glibc's `expf` bits, vectorized).
        let e = UnsafeMutablePointer<Float>.allocate(capacity: max(v, 1))
        defer { e.deallocate() }
        for r in 0..<n where mask[r] != 0 {
            let row = logits + r * v
            let mx = thor_running_max(row, v)
            thor_expf_shifted(row, mx, e, v)
            var sumExp = 0.0, sumLogits = 0.0
            for j in 0..<v { sumExp += Double(e[j]); sumLogits += Double(row[j]) }
            let logZ = Double(mx) + log(sumExp)
            let logpTarget = Double(row[Int(targets[r])]) - logZ
            let sumLogp = sumLogits - Double(v) * logZ
            total += -(1 - Double(eps)) * logpTarget - Double(eps) / Double(v) * sumLogp
            nll -= logpTarget
            count += 1
        }
        let mean = count > 0 ? total / Double(count) : 0
        return CrossEntropyResult(loss: Float(mean), lossSum: total, tokenCount: count, nllSum: nll)
    }

    /// `forward` that also keeps, for `backward(exponentials:…)`, each real row's
    /// `e_j = exp(logit_j − max)` in `exponentials` [n, V] and `1 / Σ_j e_j` (summed in Float, in
    /// index order, as `backward` sums it) in `inverseSums` [n]; pad rows of both are not written.
    /// Rows run on up to `threads` threads; the per-row terms are added in row order, so the
    /// result has the same bits as `forward` for any `threads`. `exponentials` must not overlap `logits`.
    public static func forward(
        logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, mask: UnsafePointer<Float>,
        n: Int, vocabularySize v: Int, smoothing eps: Float,
        exponentials: UnsafeMutablePointer<Float>, inverseSums: UnsafeMutablePointer<Float>, threads: Int
    ) -> CrossEntropyResult {
        // Per row: the smoothed loss term and log p(target), reduced below in row order.
        let terms = UnsafeMutablePointer<Double>.allocate(capacity: 2 * max(n, 1))
        defer { terms.deallocate() }
        Parallel.forEachRange(n, threads: threads, minimumChunk: 16) { rows in
            for r in rows where mask[r] != 0 {
                let row = logits + r * v, e = exponentials + r * v
                let mx = thor_running_max(row, v)  // `max(mx, row[j])` in index order, vectorized
                // e_j = expf(logit_j − max) with glibc's bits, vectorized (CThorKernels); the sums
                // below stay in index order.
                thor_expf_shifted(row, mx, e, v)
                var sumExp = 0.0, sumLogits = 0.0
                var floatSum: Float = 0
                for j in 0..<v {
                    let x = e[j]
                    floatSum += x
                    sumExp += Double(x); sumLogits += Double(row[j])
                }
                inverseSums[r] = 1 / floatSum
                let logZ = Double(mx) + log(sumExp)
                let logpTarget = Double(row[Int(targets[r])]) - logZ
                let sumLogp = sumLogits - Double(v) * logZ
                terms[2 * r] = -(1 - Double(eps)) * logpTarget - Double(eps) / Double(v) * sumLogp
                terms[2 * r + 1] = logpTarget
            }
        }
        var total = 0.0, nll = 0.0, count = 0
        for r in 0..<n where mask[r] != 0 {
            total += terms[2 * r]
            nll -= terms[2 * r + 1]
            count += 1
        }
        let mean = count > 0 ? total / Double(count) : 0
        return CrossEntropyResult(loss: Float(mean), lossSum: total, tokenCount: count, nllSum: nll)
    }

    /// `backward` from what `forward(…exponentials:inverseSums:…)` kept (no exponentials
    /// recomputed): the same bits as `backward` on the same logits, for any `threads`.
    /// `dlogits` may alias `exponentials`.
    public static func backward(
        dlogits: UnsafeMutablePointer<Float>, exponentials: UnsafePointer<Float>, inverseSums: UnsafePointer<Float>,
        targets: UnsafePointer<Int32>, mask: UnsafePointer<Float>, n: Int, vocabularySize v: Int,
        smoothing eps: Float, scale: Float, threads: Int
    ) {
        var count = 0
        for r in 0..<n where mask[r] != 0 { count += 1 }
        let k = count > 0 ? scale / Float(count) : 0
        let uniform = eps / Float(v)
        Parallel.forEachRange(n, threads: threads, minimumChunk: 16) { rows in
            for r in rows {
                let e = exponentials + r * v, out = dlogits + r * v
                if mask[r] == 0 { out.update(repeating: 0, count: v); continue }
                let inv = inverseSums[r]
                for j in 0..<v { out[j] = k * (e[j] * inv - uniform) }
                out[Int(targets[r])] -= k * (1 - eps)
            }
        }
    }

    /// `dlogits = scale · (softmax(logits) − t) / tokenCount` on real rows, 0 on pad rows
    /// (overwrites; `dlogits` may alias `logits`). `scale` is the loss scale.
    public static func backward(
        dlogits: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
        mask: UnsafePointer<Float>, n: Int, vocabularySize v: Int, smoothing eps: Float, scale: Float
    ) {
        var count = 0
        for r in 0..<n where mask[r] != 0 { count += 1 }
        let k = count > 0 ? scale / Float(count) : 0
        let uniform = eps / Float(v)
        for r in 0..<n {
            let row = logits + r * v, out = dlogits + r * v
            if mask[r] == 0 { out.update(repeating: 0, count: v); continue }
            let mx = thor_running_max(row, v)
            if UnsafePointer(out) == row {
                thor_expf_shifted_in_place(out, mx, v)
            } else {
                thor_expf_shifted(row, mx, out, v)
            }
            var sumExp: Float = 0
            for j in 0..<v { sumExp += out[j] }
            let inv = 1 / sumExp
            for j in 0..<v { out[j] = k * (out[j] * inv - uniform) }
            out[Int(targets[r])] -= k * (1 - eps)
        }
    }
}
