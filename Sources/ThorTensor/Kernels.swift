/// Elementwise and reduction kernels over raw Float buffers.
///
/// Plain loops over unsafe pointers (no bounds checks, vectorizable); every
/// reduction runs in a fixed order so that the same input gives the same bits.
public enum Kernels {
    /// `y[i] += x[i]` for `i < n`.
    @inlinable
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { y[i] += x[i] }
    }

    /// `y[i] += alpha · x[i]` for `i < n`.
    @inlinable
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { y[i] += alpha * x[i] }
    }

    /// `x[i] *= alpha` for `i < n`.
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, by alpha: Float, count n: Int) {
        for i in 0..<n { x[i] *= alpha }
    }

    /// Σ x[i]² accumulated in Double, in index order.
    @inlinable
    public static func sumOfSquares(_ x: UnsafePointer<Float>, count n: Int) -> Double {
        // Four partial sums in a fixed pattern: deterministic and faster than one chain.
        var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
        var i = 0
        while i + 4 <= n {
            let a = Double(x[i]), b = Double(x[i + 1]), c = Double(x[i + 2]), d = Double(x[i + 3])
            s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
            i += 4
        }
        while i < n { let a = Double(x[i]); s0 += a * a; i += 1 }
        return (s0 + s1) + (s2 + s3)
    }

    /// `out[j] += Σ_r inp[r·cols + j]`: column sums of a `rows × cols` matrix, added to `out`.
    @inlinable
    public static func addColumnSums(_ inp: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = inp + r * cols
            for j in 0..<cols { out[j] += row[j] }
        }
    }

    /// `mat[r·cols + j] += bias[j]` for every row `r`.
    @inlinable
    public static func addRowBias(_ bias: UnsafePointer<Float>, to mat: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        for r in 0..<rows {
            let row = mat + r * cols
            for j in 0..<cols { row[j] += bias[j] }
        }
    }

    /// `mat[r·cols + j] = row[j]` for every row `r` (overwrites; e.g. a bias before `gemm(beta: 1)`).
    @inlinable
    public static func fillRows(_ mat: UnsafeMutablePointer<Float>, with row: UnsafePointer<Float>, rows: Int, cols: Int) {
        for r in 0..<rows { (mat + r * cols).update(from: row, count: cols) }
    }

    /// Copies `n` floats.
    @inlinable
    public static func copy(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, count n: Int) {
        if n > 0 { dst.update(from: src, count: n) }
    }

    /// Largest |a[i] - b[i]|.
    public static func maxAbsDifference(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count n: Int) -> Float {
        var m: Float = 0
        for i in 0..<n { m = max(m, abs(a[i] - b[i])) }
        return m
    }
}
