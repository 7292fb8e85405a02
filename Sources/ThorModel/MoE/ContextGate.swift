import ThorTensor
import CThorKernels
import ThorExperts

/// The context gate of one MoE layer (SPEC §2.5):
/// `g = σ(W_g [h; c] + b_g)`, `h̃ = g ⊙ h + (1 − g) ⊙ c` (+ `r` for infuse).
///
/// `weight` is `[2d, d]`: rows `0..<d` are `W_gh` (applied to h), rows `d..<2d` are `W_gc`
/// (applied to c), so `W_g [h; c] = h · W_gh + c · W_gc`. With per-sentence context
/// (encoder) `c · W_gc + b_g` is computed once per sentence, not per token.
public final class ContextGate {
    public let dim: Int
    public let weight: Parameter
    public let bias: Parameter

    public init(name: String, dim d: Int, rng: inout RandomGenerator) {
        dim = d
        weight = Parameter(name: "\(name).w", shape: [2 * d, d])
        bias = Parameter(name: "\(name).b", shape: [d])
        rng.fillUniform(weight.value.pointer, count: 2 * d * d, limit: Float(6.0 / Double(3 * d)).squareRoot())
    }

    public var parameters: [Parameter] { [weight, bias] }

    /// h [n, d]; c [cRows, d] with `cRows = B` (one per sentence, `rowsPerContext = L`) or `n`
    /// (one per token, `rowsPerContext = 1`); r [B, d] (infuse) or nil. Writes g, ht [n, d].
    public func forward(h: UnsafePointer<Float>, c: UnsafePointer<Float>, rows n: Int, rowsPerContext l: Int,
                        r: UnsafePointer<Float>?, rowsPerSentence sl: Int,
                        g: UnsafeMutablePointer<Float>, ht: UnsafeMutablePointer<Float>) {
        let d = dim, wh = UnsafePointer(weight.value.pointer), wc = wh + d * d
        let cRows = n / l
        if l > 1 {
            // per-context pre-activation part, once per context row: cw = c · W_gc + b_g
            let cw = Tensor(shape: [cRows, d])
            Kernels.addRowBias(bias.value.pointer, to: cw.pointer, rows: cRows, cols: d)
            gemm(m: cRows, n: d, k: d, a: c, b: wc, beta: 1, c: cw.pointer)
            for t in 0..<n { (g + t * d).update(from: cw.pointer + (t / l) * d, count: d) }
        } else {
            Kernels.addRowBias(bias.value.pointer, to: g, rows: n, cols: d)
            gemm(m: n, n: d, k: d, a: c, b: wc, beta: 1, c: g)
        }
        gemm(m: n, n: d, k: d, a: h, b: wh, beta: 1, c: g)
        // Rows are independent: split over the BLAS thread count (same bits for any split).
        Parallel.forEachRange(n, threads: BLASThreads.current, minimumChunk: 64) { rows in
            // σ(x) = 1 / (1 + expf(−x)) as `FeedForward.sigmoid`, the exponentials of a row at once
            // (vectorized, glibc's `expf` bits: −x − 0 = −x for every x).
            let e = UnsafeMutablePointer<Float>.allocate(capacity: d)
            defer { e.deallocate() }
            for t in rows {
                let gt = g + t * d, ct = c + (t / l) * d, htt = ht + t * d, hh = h + t * d
                for j in 0..<d { e[j] = -gt[j] }
                thor_expf_shifted_in_place(e, 0, d)
                for j in 0..<d {
                    let s = 1 / (1 + e[j])
                    gt[j] = s
                    htt[j] = s * hh[j] + (1 - s) * ct[j]
                }
                if let r { Kernels.add(r + (t / sl) * d, into: htt, count: d) }
            }
        }
    }

    /// Backward from dht [n, d]: accumulates `W_g`, `b_g` gradients; adds into dh [n, d],
    /// dc [cRows, d] and (infuse) dr [B, d].
    public func backward(dht: UnsafePointer<Float>, h: UnsafePointer<Float>, c: UnsafePointer<Float>,
                         g: UnsafePointer<Float>, rows n: Int, rowsPerContext l: Int, rowsPerSentence sl: Int,
                         dh: UnsafeMutablePointer<Float>, dc: UnsafeMutablePointer<Float>,
                         dr: UnsafeMutablePointer<Float>?) {
        let d = dim, wh = UnsafePointer(weight.value.pointer), wc = wh + d * d
        let dwh = weight.grad.pointer, dwc = dwh + d * d
        let cRows = n / l
        let da = Tensor(uninitializedShape: [n, d])  // every row is written below
        // Split by whole sentences (`sl` rows; a context row is one sentence or one token), so
        // every sum into a row of dc or dr runs on one thread in row order: the same bits.
        let sentences = sl > 0 && n % sl == 0 ? n / sl : 1, span = sentences == 1 ? n : sl
        let dap = da.pointer
        Parallel.forEachRange(sentences, threads: BLASThreads.current, minimumChunk: max(1, 64 / max(1, span))) { part in
            for t in (part.lowerBound * span)..<(part.upperBound * span) {
                let dt = dht + t * d, gt = g + t * d, ht = h + t * d, ct = c + (t / l) * d
                let dat = dap + t * d, dht_ = dh + t * d, dct = dc + (t / l) * d
                for j in 0..<d {
                    let gj = gt[j], dj = dt[j]
                    dat[j] = dj * (ht[j] - ct[j]) * gj * (1 - gj)
                    dht_[j] += dj * gj
                    dct[j] += dj * (1 - gj)
                }
                if let dr { Kernels.add(dt, into: dr + (t / sl) * d, count: d) }
            }
        }
        gemm(transA: true, m: d, n: d, k: n, a: h, b: da.pointer, beta: 1, c: dwh)
        Kernels.addColumnSums(da.pointer, rows: n, cols: d, into: bias.grad.pointer)
        gemm(transB: true, m: n, n: d, k: d, a: da.pointer, b: wh, beta: 1, c: dh)
        if l > 1 {
            let daSum = Tensor(shape: [cRows, d])
            for t in 0..<n { Kernels.add(da.pointer + t * d, into: daSum.pointer + (t / l) * d, count: d) }
            gemm(transA: true, m: d, n: d, k: cRows, a: c, b: daSum.pointer, beta: 1, c: dwc)
            gemm(transB: true, m: cRows, n: d, k: d, a: daSum.pointer, b: wc, beta: 1, c: dc)
        } else {
            gemm(transA: true, m: d, n: d, k: n, a: c, b: da.pointer, beta: 1, c: dwc)
            gemm(transB: true, m: n, n: d, k: d, a: da.pointer, b: wc, beta: 1, c: dc)
        }
    }
}
