import ThorTensor

/// Layer normalization over the last dimension, `eps = 1e-5`:
/// `out = (x − mean) · rstd · weight + bias`, `rstd = 1/√(var + eps)` (biased variance).
///
/// Shapes: inp/out [n, d], weight/bias [d], mean/rstd [n] (kept for backward).
public enum LayerNormKernel {
    public static let epsilon: Float = 1e-5

    /// Rows below which one thread does a pass (a fork and join costs more than it saves).
    static let minimumRows = 64

    /// Rows run on up to `threads` threads; each row is computed the same way whatever the
    /// split, so the bits never depend on `threads`.
    public static func forward(
        out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
        inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, n: Int, d: Int,
        threads: Int = 1
    ) {
        let invD = 1 / Float(d)
        Parallel.forEachRange(n, threads: threads, minimumChunk: minimumRows) { rows in
            for r in rows {
                let x = inp + r * d, y = out + r * d
                var s: Float = 0
                for j in 0..<d { s += x[j] }
                let m = s * invD
                var v: Float = 0
                for j in 0..<d { let c = x[j] - m; v += c * c }
                let rs = 1 / (v * invD + epsilon).squareRoot()
                for j in 0..<d { y[j] = (x[j] - m) * rs * weight[j] + bias[j] }
                mean[r] = m; rstd[r] = rs
            }
        }
    }

    /// Backward of `forward`. Accumulates (+=) into `dinp`, `dweight` and `dbias`
    /// (accumulating `dinp` lets the residual stream's gradient be there already).
    /// The work splits into `parts` (up to `threads`, one when there are fewer than
    /// `2 · minimumRows` rows), run as one parallel region: part `p` computes `∂x` of the `p`-th
    /// range of rows and `∂weight`, `∂bias` of the `p`-th range of columns, summing over every
    /// row in order. Each element sees the same operations in the same order whatever `parts`
    /// is, so the bits never depend on `threads`.
    public static func backward(
        dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>,
        dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, n: Int, d: Int, threads: Int = 1
    ) {
        let invD = 1 / Float(d)
        let parts = max(1, min(threads, n / minimumRows, d))
        Parallel.forEachRange(parts, threads: parts) { range in
            for p in range {
                for r in (p * n / parts)..<((p + 1) * n / parts) {
                    let x = inp + r * d, dy = dout + r * d, dx = dinp + r * d
                    let m = mean[r], rs = rstd[r]
                    var sumG: Float = 0, sumGX: Float = 0
                    for j in 0..<d {
                        let xhat = (x[j] - m) * rs
                        let g = dy[j] * weight[j]
                        sumG += g; sumGX += g * xhat
                    }
                    let meanG = sumG * invD, meanGX = sumGX * invD
                    for j in 0..<d {
                        let xhat = (x[j] - m) * rs
                        dx[j] += rs * (dy[j] * weight[j] - meanG - xhat * meanGX)
                    }
                }
                let cols = (p * d / parts)..<((p + 1) * d / parts)
                for r in 0..<n {
                    let x = inp + r * d, dy = dout + r * d
                    let m = mean[r], rs = rstd[r]
                    for j in cols {
                        let xhat = (x[j] - m) * rs
                        dbias[j] += dy[j]
                        dweight[j] += dy[j] * xhat
                    }
                }
            }
        }
    }
}

/// A LayerNorm with its parameters (`<name>.weight` = 1, `<name>.bias` = 0 at init)
/// and the activations of its last training forward.
public final class LayerNorm {
    public let weight: Parameter, bias: Parameter
    public let dim: Int
    private var saved: (inp: Tensor, mean: Tensor, rstd: Tensor)?

    public init(name: String, dim d: Int) {
        dim = d
        weight = Parameter(name: "\(name).weight", shape: [d])
        bias = Parameter(name: "\(name).bias", shape: [d])
        weight.value.pointer.update(repeating: 1, count: d)
    }

    public var parameters: [Parameter] { [weight, bias] }

    /// `x` [n, d] → normalized [n, d]; keeps `x` for backward when `training`.
    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        let n = x.rows
        let y = Tensor(uninitializedShape: [n, dim]), mean = Tensor(uninitializedShape: [n])
        let rstd = Tensor(uninitializedShape: [n])
        LayerNormKernel.forward(out: y.pointer, mean: mean.pointer, rstd: rstd.pointer, inp: x.pointer,
                                weight: weight.value.pointer, bias: bias.value.pointer, n: n, d: dim,
                                threads: BLASThreads.current)
        saved = training ? (x, mean, rstd) : nil
        return y
    }

    /// Adds `∂L/∂x` into `gradInput` and accumulates parameter gradients.
    public func backward(_ gradOutput: Tensor, into gradInput: Tensor) {
        guard let s = saved else { preconditionFailure("LayerNorm.backward without a training forward") }
        LayerNormKernel.backward(dinp: gradInput.pointer, dweight: weight.grad.pointer, dbias: bias.grad.pointer,
                                 dout: gradOutput.pointer, inp: s.inp.pointer, weight: weight.value.pointer,
                                 mean: s.mean.pointer, rstd: s.rstd.pointer, n: s.inp.rows, d: dim,
                                 threads: BLASThreads.current)
        saved = nil
    }
}
