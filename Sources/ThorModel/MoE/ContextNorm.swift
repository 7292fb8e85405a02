import ThorTensor

/// `routing.context_norm = match-state` (an ablation, not SPEC; docs/reproduction.md §11): the
/// gated routing input rescaled, token by token, to the length of the token's state before the
/// token router reads it,
///
///     a_t = sqrt(‖h_t‖² + ε),  b_t = sqrt(‖u_t‖² + ε),  h̃'_t = u_t · a_t / b_t
///
/// where `u = h̃` is the context gate's output (SPEC §2.5, `+ r` included for infuse). Rows are
/// independent, so an incremental decoding step computes the same bits as the full pass.
/// Every function works over flat `[n, d]` buffers.
public enum ContextNorm {
    /// ε inside both square roots: keeps the rescale and its gradient finite at zero rows (pad rows).
    public static let epsilon: Float = 1e-5

    /// h [n, d], u [n, d] → y [n, d]; stateNorm a [n], mixNorm b [n] kept for backward.
    public static func matchStateForward(h: UnsafePointer<Float>, u: UnsafePointer<Float>, rows n: Int, dim d: Int,
                                         y: UnsafeMutablePointer<Float>, stateNorm: UnsafeMutablePointer<Float>,
                                         mixNorm: UnsafeMutablePointer<Float>) {
        // Rows are independent: split over the BLAS thread count (same bits for any split).
        Parallel.forEachRange(n, threads: BLASThreads.current, minimumChunk: 64) { rows in
            for t in rows {
                let ht = h + t * d, ut = u + t * d, yt = y + t * d
                let a = Float((Kernels.sumOfSquares(ht, count: d) + Double(epsilon)).squareRoot())
                let b = Float((Kernels.sumOfSquares(ut, count: d) + Double(epsilon)).squareRoot())
                stateNorm[t] = a; mixNorm[t] = b
                let s = a / b
                for j in 0..<d { yt[j] = ut[j] * s }
            }
        }
    }

    /// dy [n, d] → writes du [n, d] (`= s·dy − s·(u·dy)/b² · u`) and adds `(u·dy)/(a·b) · h`
    /// (the path through `a = ‖h‖`) into dh [n, d].
    public static func matchStateBackward(dy: UnsafePointer<Float>, h: UnsafePointer<Float>, u: UnsafePointer<Float>,
                                          stateNorm: UnsafePointer<Float>, mixNorm: UnsafePointer<Float>,
                                          rows n: Int, dim d: Int,
                                          du: UnsafeMutablePointer<Float>, dh: UnsafeMutablePointer<Float>) {
        Parallel.forEachRange(n, threads: BLASThreads.current, minimumChunk: 64) { rows in
            for t in rows {
                let dyt = dy + t * d, ht = h + t * d, ut = u + t * d, dut = du + t * d, dht = dh + t * d
                let a = stateNorm[t], b = mixNorm[t], s = a / b
                var dot: Float = 0
                for j in 0..<d { dot += ut[j] * dyt[j] }
                let cu = s * dot / (b * b), ch = dot / (a * b)
                for j in 0..<d {
                    dut[j] = s * dyt[j] - cu * ut[j]
                    dht[j] += ch * ht[j]
                }
            }
        }
    }
}
