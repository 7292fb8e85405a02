import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

/// The token router of one MoE layer (SPEC §2.6): `z = h̃ · W_r` [n, N], `−∞` outside the
/// candidates, plus `log q_e` with `task_prior`; `p = softmax(z)` (exactly 0 outside `C`,
/// and 0 on padding rows). Its auxiliary losses: `L_tok_lb = N · Σ_e f_e · P_e` and
/// `L_dyn` = mean token entropy (SPEC §3).
public final class TokenRouter {
    public let weight: Parameter
    public let experts: Int

    public init(name: String, dim d: Int, experts n: Int, rng: inout RandomGenerator) {
        experts = n
        weight = Parameter(name: "\(name).w", shape: [d, n])
        rng.fillUniform(weight.value.pointer, count: d * n, limit: Float(6.0 / Double(d + n)).squareRoot())
    }

    public var parameters: [Parameter] { [weight] }

    /// ht [n, d] → p [n, N]. `allowed`/`logQ` are per sentence [B, N] (`length` rows each).
    public func forward(ht: UnsafePointer<Float>, rows: Int, dim d: Int, length: Int,
                        allowed: Tensor?, logQ: Tensor?, mask: UnsafePointer<Float>) -> Tensor {
        let n = experts
        let p = Tensor(shape: [rows, n])
        gemm(m: rows, n: n, k: d, a: ht, b: weight.value.pointer, c: p.pointer)
        if let logQ {
            for t in 0..<rows { Kernels.add(logQ.pointer + (t / length) * n, into: p.pointer + t * n, count: n) }
        }
        if let allowed {
            let a = Tensor(shape: [rows, n])
            for t in 0..<rows { (a.pointer + t * n).update(from: allowed.pointer + (t / length) * n, count: n) }
            RoutingKernels.softmaxRows(p.pointer, rows: rows, cols: n, allowed: a.pointer)
        } else {
            RoutingKernels.softmaxRows(p.pointer, rows: rows, cols: n)
        }
        for t in 0..<rows where mask[t] == 0 { (p.pointer + t * n).update(repeating: 0, count: n) }
        return p
    }

    /// Adds `scale · ∂L_tok_lb/∂p` to dp and returns `L_tok_lb`. `f_e` counts the selection before
    /// capacity dropping (non-differentiable); `P_e` is the mean of `p` over non-pad tokens.
    public static func tokenBalance(p: Tensor, decision: RoutingDecision, mask: UnsafePointer<Float>,
                                    scale: Float, dp: Tensor?) -> Double {
        let rows = p.rows, n = p.columns
        var f = [Double](repeating: 0, count: n), pm = [Double](repeating: 0, count: n)
        var tokens = 0, assignments = 0
        for t in 0..<rows where mask[t] != 0 {
            tokens += 1
            for s in 0..<Int(decision.count[t]) { f[Int(decision.experts[t * decision.slots + s])] += 1; assignments += 1 }
            for j in 0..<n { pm[j] += Double(p[t * n + j]) }
        }
        guard tokens > 0, assignments > 0 else { return 0 }
        var loss = 0.0
        var coef = [Float](repeating: 0, count: n)
        for j in 0..<n {
            f[j] /= Double(assignments); pm[j] /= Double(tokens)
            loss += f[j] * pm[j]
            coef[j] = Float(Double(scale) * Double(n) * f[j] / Double(tokens))
        }
        if let dp, scale != 0 {
            coef.withUnsafeBufferPointer { c in
                for t in 0..<rows where mask[t] != 0 { Kernels.add(c.baseAddress!, into: dp.pointer + t * n, count: n) }
            }
        }
        return Double(n) * loss
    }

    /// Adds `scale · ∂L_dyn/∂p` to dp and returns `L_dyn`, the mean over non-pad tokens of
    /// `−Σ_e p_e log p_e` (0·log 0 = 0).
    public static func entropy(p: Tensor, mask: UnsafePointer<Float>, scale: Float, dp: Tensor?) -> Double {
        let rows = p.rows, n = p.columns
        var tokens = 0
        for t in 0..<rows where mask[t] != 0 { tokens += 1 }
        guard tokens > 0 else { return 0 }
        let c = scale / Float(tokens)
        var h = 0.0
        for t in 0..<rows where mask[t] != 0 {
            let pt = p.pointer + t * n
            for j in 0..<n where pt[j] > 0 {
                let l = logf(pt[j])
                h -= Double(pt[j] * l)
                if let dp, scale != 0 { dp[t * n + j] -= c * (l + 1) }
            }
        }
        return h / Double(tokens)
    }

    /// dz [n, N] → accumulates `W_r`'s gradient, returns `∂L/∂h̃` [n, d].
    public func backward(dz: Tensor, ht: UnsafePointer<Float>, dim d: Int) -> Tensor {
        let rows = dz.rows, n = experts
        gemm(transA: true, m: d, n: n, k: rows, a: ht, b: dz.pointer, beta: 1, c: weight.grad.pointer)
        let dht = Tensor(shape: [rows, d])
        gemm(transB: true, m: rows, n: d, k: n, a: dz.pointer, b: weight.value.pointer, c: dht.pointer)
        return dht
    }
}
