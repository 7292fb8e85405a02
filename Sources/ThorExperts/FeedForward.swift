import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

/// Activation of an FFN / expert (SPEC §1).
public enum Activation: String, Codable, Sendable, CaseIterable {
    case relu, gelu, swiglu

    /// Width of the first projection's output for a hidden size `dFF`
    /// (SwiGLU projects to `2·dFF`: gate half then up half).
    public func firstProjectionWidth(dFF: Int) -> Int { self == .swiglu ? 2 * dFF : dFF }
}

/// The position-wise FFN `y = W2 · act(W1 · x + b1) + b2`, used for dense
/// layers, shared experts and every routed expert.
///
/// Shapes (row-major, `f1 = act.firstProjectionWidth(dFF)`):
///   x [n, d], w1 [d, f1], b1 [f1], h [n, f1] (pre-activation, kept),
///   a [n, dFF] (post-activation, kept), w2 [dFF, d], b2 [d], y [n, d].
/// SwiGLU: `h = [gate | up]`, `a = silu(gate) ⊙ up`.
public enum FeedForward {
    public static func forward(
        y: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>, a: UnsafeMutablePointer<Float>,
        x: UnsafePointer<Float>,
        w1: UnsafePointer<Float>, b1: UnsafePointer<Float>, w2: UnsafePointer<Float>, b2: UnsafePointer<Float>,
        n: Int, d: Int, dFF: Int, activation: Activation
    ) {
        guard n > 0 else { return }
        let f1 = activation.firstProjectionWidth(dFF: dFF)
        // h = x · w1, then one pass adds b1 and applies the activation (rows split over
        // the BLAS thread count; every element is computed the same way whatever the split).
        gemm(m: n, n: f1, k: d, a: x, b: w1, c: h)
        Parallel.forEachRange(n, threads: BLASThreads.current, minimumChunk: 64) { rows in
            for r in rows {
                let hr = h + r * f1, ar = a + r * dFF
                if activation == .relu {
                    ReLUKernels.biasForward(h: hr, bias: b1, a: ar, count: dFF)
                    continue
                }
                for j in 0..<f1 { hr[j] += b1[j] }
                switch activation {
                case .relu: break
                case .gelu: for j in 0..<dFF { ar[j] = geluValue(hr[j]) }
                case .swiglu: for j in 0..<dFF { ar[j] = silu(hr[j]) * hr[dFF + j] }
                }
            }
        }
        Kernels.fillRows(y, with: b2, rows: n, cols: d)
        gemm(m: n, n: d, k: dFF, a: a, b: w2, beta: 1, c: y)
    }

    /// Backward of `forward`. Parameter gradients (`dw1`, `db1`, `dw2`, `db2`)
    /// are accumulated (+=); `dx` is overwritten. `dh` [n, f1] and `da` [n, dFF]
    /// are scratch buffers.
    public static func backward(
        dx: UnsafeMutablePointer<Float>,
        dw1: UnsafeMutablePointer<Float>, db1: UnsafeMutablePointer<Float>,
        dw2: UnsafeMutablePointer<Float>, db2: UnsafeMutablePointer<Float>,
        dy: UnsafePointer<Float>, h: UnsafePointer<Float>, a: UnsafePointer<Float>, x: UnsafePointer<Float>,
        w1: UnsafePointer<Float>, w2: UnsafePointer<Float>,
        dh: UnsafeMutablePointer<Float>, da: UnsafeMutablePointer<Float>,
        n: Int, d: Int, dFF: Int, activation: Activation
    ) {
        guard n > 0 else { return }
        let f1 = activation.firstProjectionWidth(dFF: dFF)
        // dw2 += aᵀ · dy ; db2 += Σ_rows dy ; da = dy · w2ᵀ
        gemm(transA: true, m: dFF, n: d, k: n, a: a, b: dy, beta: 1, c: dw2)
        Kernels.addColumnSums(dy, rows: n, cols: d, into: db2)
        gemm(transB: true, m: n, n: dFF, k: d, a: dy, b: w2, c: da)
        let threads = BLASThreads.current
        Parallel.forEachRange(n, threads: threads, minimumChunk: 64) { rows in
            activationBackward(dh: dh + rows.lowerBound * f1, da: da + rows.lowerBound * dFF, h: h + rows.lowerBound * f1,
                               rows: rows.count, dFF: dFF, activation: activation)
        }
        gemm(transA: true, m: d, n: f1, k: n, a: x, b: dh, beta: 1, c: dw1)
        // db1 += column sums of dh, columns split over threads (each sums its rows in order).
        Parallel.forEachRange(f1, threads: threads, minimumChunk: 256) { cols in
            for r in 0..<n {
                let row = dh + r * f1
                for j in cols { db1[j] += row[j] }
            }
        }
        gemm(transB: true, m: n, n: d, k: f1, a: dh, b: w1, c: dx)
    }

    /// `dh` [rows, f1] = ∂L/∂h from `da` [rows, dFF] = ∂L/∂a and the kept pre-activation `h` [rows, f1]
    /// (each element on its own, so any split of the rows gives the same bits).
    public static func activationBackward(
        dh: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>, h: UnsafePointer<Float>,
        rows: Int, dFF: Int, activation: Activation
    ) {
        let f1 = activation.firstProjectionWidth(dFF: dFF)
        for r in 0..<rows {
            let hr = h + r * f1, g = da + r * dFF, dr = dh + r * f1
            switch activation {
            case .relu:
                ReLUKernels.backward(dh: dr, da: g, h: hr, count: dFF)
            case .gelu:
                for j in 0..<dFF { dr[j] = g[j] * geluDerivative(hr[j]) }
            case .swiglu:
                let up = hr + dFF, dup = dr + dFF
                for j in 0..<dFF {
                    let s = sigmoid(hr[j])
                    dup[j] = g[j] * hr[j] * s
                    dr[j] = g[j] * up[j] * s * (1 + hr[j] * (1 - s))
                }
            }
        }
    }

    @inline(__always) public static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }
    @inline(__always) public static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))` (PyTorch's default).
    @inline(__always) public static func geluValue(_ x: Float) -> Float {
        0.5 * x * (1 + erff(x * 0.70710678118654752))
    }
    @inline(__always) public static func geluDerivative(_ x: Float) -> Float {
        0.5 * (1 + erff(x * 0.70710678118654752)) + x * expf(-0.5 * x * x) * 0.3989422804014327
    }
}
