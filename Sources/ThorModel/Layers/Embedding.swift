import ThorTensor

/// Token embedding tied with the output projection (SPEC §2 fine print: one joint
/// vocabulary; source, target and output embeddings tied; embeddings scaled by √d).
///
/// Shapes (row-major): table [V, d], ids [n] (Int32, each in 0..<V), out [n, d],
/// hidden [n, d], logits [n, V].
public enum Embedding {
    /// `out[r] = scale · table[ids[r]]` (overwrites `out`).
    public static func forward(
        out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>,
        n: Int, d: Int, scale: Float
    ) {
        for r in 0..<n {
            let src = table + Int(ids[r]) * d, dst = out + r * d
            for j in 0..<d { dst[j] = scale * src[j] }
        }
    }

    /// Backward of `forward`: `dtable[ids[r]] += scale · dout[r]` (accumulates).
    public static func backward(
        dtable: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>,
        n: Int, d: Int, scale: Float
    ) {
        for r in 0..<n {
            Kernels.axpy(scale, dout + r * d, into: dtable + Int(ids[r]) * d, count: d)
        }
    }

    /// Tied output projection `logits = hidden · tableᵀ` (no bias; overwrites `logits`).
    public static func projectForward(
        logits: UnsafeMutablePointer<Float>, hidden: UnsafePointer<Float>, table: UnsafePointer<Float>,
        n: Int, d: Int, vocabularySize v: Int
    ) {
        gemm(transB: true, m: n, n: v, k: d, a: hidden, b: table, c: logits)
    }

    /// Backward of `projectForward`: `dtable += dlogitsᵀ · hidden` (accumulates),
    /// `dhidden = dlogits · table` (overwrites).
    public static func projectBackward(
        dhidden: UnsafeMutablePointer<Float>, dtable: UnsafeMutablePointer<Float>,
        dlogits: UnsafePointer<Float>, hidden: UnsafePointer<Float>, table: UnsafePointer<Float>,
        n: Int, d: Int, vocabularySize v: Int
    ) {
        gemm(transA: true, m: v, n: d, k: n, a: dlogits, b: hidden, beta: 1, c: dtable)
        gemm(m: n, n: d, k: v, a: dlogits, b: table, c: dhidden)
    }
}
