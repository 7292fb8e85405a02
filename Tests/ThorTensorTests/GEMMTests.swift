import XCTest
import ThorTensor

final class GEMMTests: XCTestCase {
    /// Every transpose combination against a naive triple loop.
    func testEveryTransposeCombinationMatchesNaiveProduct() {
        var rng = RandomGenerator(seed: 1)
        let m = 5, n = 7, k = 3
        for transA in [false, true] {
            for transB in [false, true] {
                let a = Tensor(shape: transA ? [k, m] : [m, k])
                let b = Tensor(shape: transB ? [n, k] : [k, n])
                rng.fillNormal(a.pointer, count: a.count, std: 1)
                rng.fillNormal(b.pointer, count: b.count, std: 1)
                let c = Tensor(shape: [m, n])
                for i in 0..<c.count { c[i] = Float(i) }
                let c0 = Tensor(copying: c)
                gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5,
                     a: a.pointer, b: b.pointer, beta: 2, c: c.pointer)
                for i in 0..<m {
                    for j in 0..<n {
                        var s: Float = 0
                        for p in 0..<k {
                            let av = transA ? a[p * m + i] : a[i * k + p]
                            let bv = transB ? b[j * k + p] : b[p * n + j]
                            s += av * bv
                        }
                        XCTAssertEqual(c[i * n + j], 0.5 * s + 2 * c0[i * n + j], accuracy: 1e-4,
                                       "transA=\(transA) transB=\(transB) at (\(i),\(j))")
                    }
                }
            }
        }
    }

    /// Same input and thread count, same bits. (OpenBLAS 0.3.21 does give different
    /// bits for 1 and 2 threads at some shapes — with the Haswell kernels at every shape
    /// tried, with the SkylakeX kernels at e.g. [512×1100]·[1100×256] — which is why expert
    /// compute always runs with one BLAS thread per task: see docs/architecture.md.)
    func testGEMMIsDeterministicAcrossRunsAndThreadCounts() {
        var rng = RandomGenerator(seed: 2)
        let m = 300, n = 257, k = 190
        let a = Tensor(shape: [m, k]), b = Tensor(shape: [k, n])
        rng.fillNormal(a.pointer, count: a.count, std: 1)
        rng.fillNormal(b.pointer, count: b.count, std: 1)
        let before = BLASThreads.current
        defer { BLASThreads.set(before) }
        var results: [Tensor] = []
        for threads in [1, 2, 1, 2] {
            BLASThreads.set(threads)
            let c = Tensor(shape: [m, n])
            gemm(m: m, n: n, k: k, a: a.pointer, b: b.pointer, c: c.pointer)
            results.append(c)
        }
        XCTAssertTrue(results[2].bitwiseEqual(results[0]), "1 thread, run twice")
        XCTAssertTrue(results[3].bitwiseEqual(results[1]), "2 threads, run twice")
    }
}
