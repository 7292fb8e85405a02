import ThorTensor

/// The row passes around the expert call (gather, combine, and their backward), split over
/// the BLAS thread count. Every output row is written by one thread with the same operations
/// in the same order as a single-threaded pass, so the bits never depend on the split.
enum DispatchKernels {
    /// Threads for the row passes: the coordinator's BLAS thread count.
    static var threads: Int { BLASThreads.current }

    /// Rows of one pass per task at least (below that, one thread does the pass).
    static let minimumRows = 64

    /// `out[j] = x[rows[a]]` for `a` in `range`, `j = a − range.lowerBound` (rows of width `d`).
    static func gather(_ range: Range<Int>, rows: IndexBuffer, from x: UnsafePointer<Float>, dim d: Int,
                       into out: UnsafeMutablePointer<Float>) {
        let lo = range.lowerBound
        Parallel.forEachRange(range.count, threads: threads, minimumChunk: minimumRows) { part in
            for j in part {
                (out + j * d).update(from: x + Int(rows[lo + j]) * d, count: d)
            }
        }
    }

    /// `y[rows[a]] += w[slots[a]] · out[j]` for `a` in `range` (one expert's group: its rows are
    /// distinct, so the split cannot reorder additions into one row).
    static func combine(_ range: Range<Int>, rows: IndexBuffer, slots: IndexBuffer, weights: UnsafePointer<Float>,
                        outputs out: UnsafePointer<Float>, dim d: Int, into y: UnsafeMutablePointer<Float>) {
        let lo = range.lowerBound
        Parallel.forEachRange(range.count, threads: threads, minimumChunk: minimumRows) { part in
            for j in part {
                let a = lo + j
                Kernels.axpy(weights[Int(slots[a])], out + j * d, into: y + Int(rows[a]) * d, count: d)
            }
        }
    }

    /// `dx[rows[a]] += g[j]` for `a` in `range` (one expert's group).
    static func scatterAdd(_ range: Range<Int>, rows: IndexBuffer, gradients g: UnsafePointer<Float>, dim d: Int,
                           into dx: UnsafeMutablePointer<Float>) {
        let lo = range.lowerBound
        Parallel.forEachRange(range.count, threads: threads, minimumChunk: minimumRows) { part in
            for j in part {
                Kernels.add(g + j * d, into: dx + Int(rows[lo + j]) * d, count: d)
            }
        }
    }

    /// For each assignment `a` in `range` of token `t = rows[a]`, slot `s = slots[a]`:
    /// `g[j] = w[s] · dy[t]` and `dw[s] = Σ_q dy[t][q] · out[j][q]` (summed in `q` order).
    /// Four rows' dot products run interleaved (four independent chains, each in `q` order).
    static func weightedGradients(_ range: Range<Int>, rows: IndexBuffer, slots: IndexBuffer, weights: UnsafePointer<Float>,
                                  dy: UnsafePointer<Float>, outputs out: UnsafePointer<Float>, dim d: Int,
                                  into g: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>) {
        let lo = range.lowerBound
        Parallel.forEachRange(range.count, threads: threads, minimumChunk: minimumRows) { part in
            var j = part.lowerBound
            while j < part.upperBound {
                let n = min(4, part.upperBound - j)
                for k in 0..<n {
                    let a = lo + j + k
                    let w = weights[Int(slots[a])], dyt = dy + Int(rows[a]) * d, gp = g + (j + k) * d
                    for q in 0..<d { gp[q] = w * dyt[q] }
                }
                if n == 4 {
                    let y0 = dy + Int(rows[lo + j]) * d, y1 = dy + Int(rows[lo + j + 1]) * d
                    let y2 = dy + Int(rows[lo + j + 2]) * d, y3 = dy + Int(rows[lo + j + 3]) * d
                    let o0 = out + j * d, o1 = o0 + d, o2 = o1 + d, o3 = o2 + d
                    var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
                    for q in 0..<d {
                        s0 += y0[q] * o0[q]; s1 += y1[q] * o1[q]; s2 += y2[q] * o2[q]; s3 += y3[q] * o3[q]
                    }
                    dw[Int(slots[lo + j])] = s0; dw[Int(slots[lo + j + 1])] = s1
                    dw[Int(slots[lo + j + 2])] = s2; dw[Int(slots[lo + j + 3])] = s3
                } else {
                    for k in 0..<n {
                        let a = lo + j + k
                        let dyt = dy + Int(rows[a]) * d, o = out + (j + k) * d
                        var s: Float = 0
                        for q in 0..<d { s += dyt[q] * o[q] }
                        dw[Int(slots[a])] = s
                    }
                }
                j += n
            }
        }
    }
}
