import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

/// What the task router decided for one batch: `q = softmax(W_task^l r)` and the
/// candidate set `C = TopK(q, K)` per sentence (SPEC §2.3).
public struct TaskRouting: @unchecked Sendable {
    /// q [B, N].
    public let q: Tensor
    /// log q [B, N] (log-softmax, finite).
    public let logQ: Tensor
    /// 1 where the expert is a candidate of the sentence, else 0 [B, N].
    public let allowed: Tensor
    /// Candidate ids per sentence in descending q (ties: lower id) [B, K].
    public let candidates: IndexBuffer
    public let batch: Int, experts: Int, k: Int

    public func candidateSet(_ b: Int) -> [Int] { (0..<k).map { Int(candidates[b * k + $0]) } }
}

/// The task router of one MoE layer: `W_task^l` [d, N] (`logits = r · W_task`), and its
/// balance loss `L_task_lb = N · Σ_e f_e · P_e`, `f_e = (1/(B·K)) Σ_b 1[e ∈ C_b]`,
/// `P_e = (1/B) Σ_b q_{b,e}` (SPEC §3).
public final class TaskRouter {
    public let weight: Parameter
    public let experts: Int
    public let candidates: Int

    public init(name: String, dim d: Int, experts n: Int, candidates k: Int, rng: inout RandomGenerator) {
        experts = n; candidates = k
        weight = Parameter(name: "\(name).w", shape: [d, n])
        rng.fillUniform(weight.value.pointer, count: d * n, limit: Float(6.0 / Double(d + n)).squareRoot())
    }

    public var parameters: [Parameter] { [weight] }

    /// r [B, d] → q, log q, candidates.
    public func forward(r: Tensor) -> TaskRouting {
        let b = r.rows, d = r.columns, n = experts, k = candidates
        let logits = Tensor(shape: [b, n])
        gemm(m: b, n: n, k: d, a: r.pointer, b: weight.value.pointer, c: logits.pointer)
        let q = Tensor(shape: [b, n]), logQ = Tensor(shape: [b, n]), allowed = Tensor(shape: [b, n])
        let cand = IndexBuffer(count: b * k)
        for s in 0..<b {
            let z = logits.pointer + s * n
            var m = -Float.infinity
            for j in 0..<n { m = max(m, z[j]) }
            var sum: Float = 0
            for j in 0..<n { sum += expf(z[j] - m) }
            let lse = m + logf(sum)
            for j in 0..<n { logQ[s * n + j] = z[j] - lse; q[s * n + j] = expf(z[j] - lse) }
            RoutingKernels.topK(q.pointer + s * n, count: n, k: k, into: cand.pointer + s * k)
            for i in 0..<k { allowed[s * n + Int(cand[s * k + i])] = 1 }
        }
        return TaskRouting(q: q, logQ: logQ, allowed: allowed, candidates: cand, batch: b, experts: n, k: k)
    }

    /// `(L_task_lb, ∂L_task_lb/∂q_{b,e} = N·f_e/B` for every b, as a row [N]).
    public func balanceLoss(_ tr: TaskRouting) -> (value: Double, gradient: [Float]) {
        let b = tr.batch, n = tr.experts
        var f = [Double](repeating: 0, count: n), pm = [Double](repeating: 0, count: n)
        for s in 0..<b {
            for i in 0..<tr.k { f[Int(tr.candidates[s * tr.k + i])] += 1 }
            for j in 0..<n { pm[j] += Double(tr.q[s * n + j]) }
        }
        var loss = 0.0
        var grad = [Float](repeating: 0, count: n)
        for j in 0..<n {
            f[j] /= Double(b * tr.k); pm[j] /= Double(b)
            loss += f[j] * pm[j]
            grad[j] = Float(Double(n) * f[j] / Double(b))
        }
        return (Double(n) * loss, grad)
    }

    /// Backward: `dLogQ` [B, N] is `∂L/∂log q` (task prior) or nil; `balanceScale` is the
    /// weight of `L_task_lb` for this layer (0: none). Accumulates `W_task`'s gradient, returns `∂L/∂r` [B, d].
    public func backward(_ tr: TaskRouting, r: Tensor, dLogQ: Tensor?, balanceScale: Float) -> Tensor {
        let b = tr.batch, n = tr.experts, d = r.columns
        let dlogits = Tensor(shape: [b, n])
        if balanceScale != 0 {
            let g = balanceLoss(tr).gradient
            let dq = [Float](g.map { $0 * balanceScale })
            dq.withUnsafeBufferPointer { dqp in
                for s in 0..<b {
                    RoutingKernels.softmaxBackward(p: tr.q.pointer + s * n, dp: dqp.baseAddress!,
                                                   dz: dlogits.pointer + s * n, count: n)
                }
            }
        }
        if let dLogQ {
            // log-softmax backward: dz = dl − q · Σ dl
            for s in 0..<b {
                let dl = dLogQ.pointer + s * n, qs = tr.q.pointer + s * n, dz = dlogits.pointer + s * n
                var sum: Float = 0
                for j in 0..<n { sum += dl[j] }
                for j in 0..<n { dz[j] += dl[j] - qs[j] * sum }
            }
        }
        gemm(transA: true, m: d, n: n, k: b, a: r.pointer, b: dlogits.pointer, beta: 1, c: weight.grad.pointer)
        let dr = Tensor(shape: [b, d])
        gemm(transB: true, m: b, n: d, k: n, a: dlogits.pointer, b: weight.value.pointer, c: dr.pointer)
        return dr
    }
}
