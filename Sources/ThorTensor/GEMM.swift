import CBLAS

/// Matrix products through OpenBLAS `cblas_sgemm`, row-major.
///
/// `C[m×n] = alpha · op(A) · op(B) + beta · C`, where `op(A)` is `m×k` and
/// `op(B)` is `k×n`. `lda`, `ldb`, `ldc` are row strides of the matrices as
/// stored (defaults: densely packed).
@inlinable
public func gemm(
    transA: Bool = false, transB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int? = nil,
    b: UnsafePointer<Float>, ldb: Int? = nil,
    beta: Float = 0,
    c: UnsafeMutablePointer<Float>, ldc: Int? = nil
) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        // BLAS leaves C untouched for k == 0 only when beta == 1; make it explicit.
        let ldcv = ldc ?? n
        for i in 0..<m { for j in 0..<n { c[i * ldcv + j] *= beta } }
        return
    }
    let ldaValue = lda ?? (transA ? m : k)
    let ldbValue = ldb ?? (transB ? k : n)
    cblas_sgemm(CblasRowMajor,
                transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans,
                blasint(m), blasint(n), blasint(k),
                alpha, a, blasint(ldaValue), b, blasint(ldbValue),
                beta, c, blasint(ldc ?? n))
}

/// OpenBLAS thread control. The same call at the same thread count gives the
/// same bits; a different thread count can change the last bits at some shapes
/// (seen with OpenBLAS 0.3.21), so whatever must be bit-identical across
/// placements (expert compute) runs with a fixed thread count.
public enum BLASThreads {
    /// Sets the number of threads OpenBLAS uses for subsequent calls.
    public static func set(_ count: Int) { openblas_set_num_threads(Int32(max(1, count))) }
    /// The number of threads OpenBLAS currently uses.
    public static var current: Int { Int(openblas_get_num_threads()) }
}

#if canImport(Glibc)
import Glibc
#endif
