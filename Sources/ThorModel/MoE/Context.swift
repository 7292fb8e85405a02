import ThorTensor

/// The context `c` of each token (SPEC §2.4), over non-pad positions:
/// encoder — the mean of the sentence, one row per sentence `[B, d]`;
/// decoder — the causal prefix mean, one row per token `[B·L, d]`.
/// `inverse` holds `1 / count` for each context row (0 when the count is 0).
public enum Context {
    /// c [B, d], inverse [B] from h [B·L, d].
    public static func encoderForward(h: UnsafePointer<Float>, mask: UnsafePointer<Float>, batch b: Int, length l: Int,
                                      dim d: Int, c: UnsafeMutablePointer<Float>, inverse: UnsafeMutablePointer<Float>) {
        for s in 0..<b {
            let cs = c + s * d
            cs.update(repeating: 0, count: d)
            var n = 0
            for i in 0..<l where mask[s * l + i] != 0 {
                Kernels.add(h + (s * l + i) * d, into: cs, count: d); n += 1
            }
            let inv: Float = n > 0 ? 1 / Float(n) : 0
            Kernels.scale(cs, by: inv, count: d)
            inverse[s] = inv
        }
    }

    /// dh[t] += inverse[b] · dc[b] for every non-pad row t of sentence b.
    public static func encoderBackward(dc: UnsafePointer<Float>, mask: UnsafePointer<Float>, inverse: UnsafePointer<Float>,
                                       batch b: Int, length l: Int, dim d: Int, dh: UnsafeMutablePointer<Float>) {
        for s in 0..<b {
            for i in 0..<l where mask[s * l + i] != 0 {
                Kernels.axpy(inverse[s], dc + s * d, into: dh + (s * l + i) * d, count: d)
            }
        }
    }

    /// c [B·L, d], inverse [B·L]: `c_t = (Σ_{i≤t, non-pad} h_i) · (1/count)`, the running sum
    /// updated exactly as incremental decoding does (`step`).
    public static func decoderForward(h: UnsafePointer<Float>, mask: UnsafePointer<Float>, batch b: Int, length l: Int,
                                      dim d: Int, c: UnsafeMutablePointer<Float>, inverse: UnsafeMutablePointer<Float>) {
        let sum = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { sum.deallocate() }
        for s in 0..<b {
            sum.update(repeating: 0, count: d)
            var n: Float = 0
            for i in 0..<l {
                let t = s * l + i
                inverse[t] = step(h: h + t * d, isToken: mask[t] != 0, sum: sum, count: &n, dim: d, c: c + t * d)
            }
        }
    }

    /// One decoder position: adds `h` to the running `sum` (if a token), writes `c = sum · (1/count)`,
    /// returns `1/count` (0 before the first token).
    @inline(__always)
    public static func step(h: UnsafePointer<Float>, isToken: Bool, sum: UnsafeMutablePointer<Float>,
                            count: inout Float, dim d: Int, c: UnsafeMutablePointer<Float>) -> Float {
        if isToken { Kernels.add(h, into: sum, count: d); count += 1 }
        let inv: Float = count > 0 ? 1 / count : 0
        for j in 0..<d { c[j] = sum[j] * inv }
        return inv
    }

    /// dh[i] += Σ_{t ≥ i} inverse[t] · dc[t] for every non-pad row i (reverse running sum).
    public static func decoderBackward(dc: UnsafePointer<Float>, mask: UnsafePointer<Float>, inverse: UnsafePointer<Float>,
                                       batch b: Int, length l: Int, dim d: Int, dh: UnsafeMutablePointer<Float>) {
        let acc = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { acc.deallocate() }
        for s in 0..<b {
            acc.update(repeating: 0, count: d)
            for i in stride(from: l - 1, through: 0, by: -1) {
                let t = s * l + i
                Kernels.axpy(inverse[t], dc + t * d, into: acc, count: d)
                if mask[t] != 0 { Kernels.add(acc, into: dh + t * d, count: d) }
            }
        }
    }
}
