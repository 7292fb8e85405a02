import ThorTensor

/// The context `c` of a prefix-LM pass (decoder-only model, docs/routing.md), one row per token
/// `[B·L, d]` over non-pad positions, with the first `P` rows of each sentence the prefix
/// (`[CLS] source`) and the rest the target:
///
/// * prefix token: the mean of the whole prefix (bidirectional, like the encoder's sentence mean);
/// * target token `t`: the causal prefix mean over the whole sequence up to `t`,
///   `(Σ_{prefix} h_i + Σ_{target j ≤ t} h_j) / (n_prefix + #{j ≤ t})` (SPEC §2.4's decoder rule
///   over the one sequence the model attends over).
///
/// The running sum is accumulated in row order and continued with `Context.step`, exactly as
/// incremental decoding continues it from the prefix pass's `MoEDecodingState`, so both give the
/// same bits.
extension Context {
    /// c [B·L, d], inverse [B·L] (`1/count` of each row's context). When `prefixSums` [B, d] /
    /// `prefixCounts` [B] are given, they receive each sentence's prefix sum and count.
    public static func prefixLMForward(h: UnsafePointer<Float>, mask: UnsafePointer<Float>, batch b: Int, length l: Int,
                                       prefixLength p: Int, dim d: Int, c: UnsafeMutablePointer<Float>,
                                       inverse: UnsafeMutablePointer<Float>,
                                       prefixSums: UnsafeMutablePointer<Float>? = nil,
                                       prefixCounts: UnsafeMutablePointer<Float>? = nil) {
        precondition(p >= 0 && p <= l, "prefix length \(p) outside 0...\(l)")
        let sum = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { sum.deallocate() }
        for s in 0..<b {
            sum.update(repeating: 0, count: d)
            var n: Float = 0
            for i in 0..<p where mask[s * l + i] != 0 {
                Kernels.add(h + (s * l + i) * d, into: sum, count: d); n += 1
            }
            prefixSums.map { Kernels.copy(sum, to: $0 + s * d, count: d) }
            prefixCounts.map { $0[s] = n }
            let inv: Float = n > 0 ? 1 / n : 0
            for i in 0..<p {
                let t = s * l + i, ct = c + t * d
                for j in 0..<d { ct[j] = sum[j] * inv }
                inverse[t] = inv
            }
            for i in p..<l {
                let t = s * l + i
                inverse[t] = step(h: h + t * d, isToken: mask[t] != 0, sum: sum, count: &n, dim: d, c: c + t * d)
            }
        }
    }

    /// Backward of `prefixLMForward`: target row `j` gets `Σ_{t ≥ j} inverse[t] · dc[t]`; every prefix
    /// row gets the whole target sum plus `inverse_prefix · Σ_{prefix rows} dc` (non-pad rows only).
    public static func prefixLMBackward(dc: UnsafePointer<Float>, mask: UnsafePointer<Float>, inverse: UnsafePointer<Float>,
                                        batch b: Int, length l: Int, prefixLength p: Int, dim d: Int,
                                        dh: UnsafeMutablePointer<Float>) {
        let acc = UnsafeMutablePointer<Float>.allocate(capacity: d)
        let prefix = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { acc.deallocate(); prefix.deallocate() }
        for s in 0..<b {
            acc.update(repeating: 0, count: d)
            for i in stride(from: l - 1, through: p, by: -1) {
                let t = s * l + i
                Kernels.axpy(inverse[t], dc + t * d, into: acc, count: d)
                if mask[t] != 0 { Kernels.add(acc, into: dh + t * d, count: d) }
            }
            guard p > 0 else { continue }
            prefix.update(repeating: 0, count: d)
            for i in 0..<p { Kernels.add(dc + (s * l + i) * d, into: prefix, count: d) }
            Kernels.axpy(inverse[s * l], prefix, into: acc, count: d)
            for i in 0..<p where mask[s * l + i] != 0 { Kernels.add(acc, into: dh + (s * l + i) * d, count: d) }
        }
    }
}
