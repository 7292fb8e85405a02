import Foundation
import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// Values of the routing levels and their auxiliary losses on hand-made cases (4 experts,
/// a few tokens), against SPEC §2–3 worked out here with plain loops. The gradient tests only
/// show that each backward matches its own forward; these pin the forward itself (a wrong
/// normalisation, a pad row counted, a wrong half would fail here).
final class RoutingValueTests: XCTestCase {
    let n = 4

    // MARK: task router (SPEC §2.3) and L_task_lb (SPEC §3)

    /// `W_task` [d = 3, N = 4] (`logits = r · W_task`) and three task representations; the last
    /// is 0, so its q is uniform and its candidates are the lower ids (ties).
    let taskWeight: [[Double]] = [[0.5, -1.0, 0.25, 2.0],
                                  [1.5, 0.0, -0.5, 1.0],
                                  [-1.0, 0.75, 1.0, 0.0]]
    let taskR: [[Double]] = [[1.0, -0.5, 2.0],
                             [-1.0, 1.0, 0.5],
                             [0.0, 0.0, 0.0]]

    func taskRouter(candidates k: Int) -> TaskRouter {
        var rng = RandomGenerator(seed: 1)
        let tr = TaskRouter(name: "t", dim: 3, experts: n, candidates: k, rng: &rng)
        fill(tr.weight.value, taskWeight)
        return tr
    }

    /// q per sentence and its top-K (descending q, ties to the lower id), by hand.
    func expectedTaskRouting(k: Int) -> (q: [[Double]], candidates: [[Int]]) {
        let q = taskR.map { softmax(rowTimes($0, taskWeight)) }
        let c = q.map { qs in Array((0..<n).sorted { qs[$0] > qs[$1] || (qs[$0] == qs[$1] && $0 < $1) }.prefix(k)) }
        return (q, c)
    }

    func testTaskRouterProbabilitiesAndCandidates() {
        let routing = taskRouter(candidates: 2).forward(r: tensor(taskR))
        let (q, c) = expectedTaskRouting(k: 2)
        assertValues(routing.q, q.flatMap { $0 }, "q")
        assertValues(routing.logQ, q.flatMap { $0.map { Foundation.log($0) } }, "log q")
        for b in 0..<3 {
            XCTAssertEqual(routing.candidateSet(b), c[b], "candidates of sentence \(b)")
            for e in 0..<n {
                XCTAssertEqual(routing.allowed[b * n + e], c[b].contains(e) ? 1 : 0, "allowed[\(b), \(e)]")
            }
        }
        XCTAssertEqual(routing.candidateSet(2), [0, 1], "uniform q: ties go to the lower ids")
    }

    /// `L_task_lb = N · Σ_e f_e · P_e`, `f_e = (1/(B·K)) Σ_b 1[e ∈ C_b]`, `P_e = (1/B) Σ_b q_{b,e}`;
    /// its gradient with respect to each `q_{b,e}` is `N · f_e / B`.
    func testTaskBalanceLossValueAndGradient() {
        for k in [1, 2, 3] {
            let router = taskRouter(candidates: k)
            let (q, c) = expectedTaskRouting(k: k)
            let b = Double(q.count)
            var loss = 0.0
            var gradient = [Double](repeating: 0, count: n)
            for e in 0..<n {
                let f = Double(c.filter { $0.contains(e) }.count) / (b * Double(k))
                let p = q.reduce(0.0) { $0 + $1[e] } / b
                loss += f * p
                gradient[e] = Double(n) * f / b
            }
            loss *= Double(n)
            let got = router.balanceLoss(router.forward(r: tensor(taskR)))
            XCTAssertEqual(got.value, loss, accuracy: 1e-6, "L_task_lb with K = \(k)")
            XCTAssertEqual(got.gradient.count, n, "K = \(k)")
            for e in 0..<min(n, got.gradient.count) {
                XCTAssertEqual(Double(got.gradient[e]), gradient[e], accuracy: 1e-6, "∂L_task_lb/∂q[·, \(e)] with K = \(k)")
            }
        }
    }

    /// A balanced router (uniform q) has `L_task_lb = N · Σ_e f_e / N = 1` whatever the candidates.
    func testTaskBalanceLossIsOneWhenUniform() {
        let router = taskRouter(candidates: 2)
        let got = router.balanceLoss(router.forward(r: Tensor(shape: [5, 3])))
        XCTAssertEqual(got.value, 1, accuracy: 1e-6)
    }

    // MARK: token router (SPEC §2.6)

    /// Two sentences of two positions (the last one padding); candidates and `log q` per sentence.
    let tokenWeight: [[Double]] = [[1.0, -0.5, 0.25, 0.5],
                                   [-0.75, 1.25, 0.5, -1.0]]
    let tokenH: [[Double]] = [[0.5, 1.0], [-1.0, 2.0], [1.5, -0.5], [3.0, 3.0]]
    let tokenMask: [Float] = [1, 1, 1, 0]
    let allowed: [[Double]] = [[1, 0, 1, 1], [0, 1, 1, 0]]
    let prior: [[Double]] = [[0.5, 0.1, 0.3, 0.1], [0.2, 0.2, 0.4, 0.2]]

    func tokenRouterProbabilities(taskPrior: Bool) -> Tensor {
        var rng = RandomGenerator(seed: 2)
        let router = TokenRouter(name: "r", dim: 2, experts: n, rng: &rng)
        fill(router.weight.value, tokenWeight)
        let logQ = taskPrior ? tensor(prior.map { $0.map { Foundation.log($0) } }) : nil
        let ht = tensor(tokenH)
        return tokenMask.withUnsafeBufferPointer { m in
            router.forward(ht: ht.pointer, rows: 4, dim: 2, length: 2, allowed: tensor(allowed), logQ: logQ, mask: m.baseAddress!)
        }
    }

    /// `p_t = softmax(z)` over the candidates of its sentence, `z_e = (h̃_t W_r)_e (+ log q_e)`,
    /// exactly 0 outside `C` and on padding rows.
    func expectedTokenProbabilities(taskPrior: Bool) -> [Double] {
        var out: [Double] = []
        for t in 0..<4 {
            let s = t / 2
            guard tokenMask[t] != 0 else { out += [0, 0, 0, 0]; continue }
            let z = rowTimes(tokenH[t], tokenWeight)
            var e = [Double](repeating: 0, count: n)
            for j in 0..<n where allowed[s][j] != 0 {
                e[j] = Foundation.exp(z[j]) * (taskPrior ? prior[s][j] : 1)
            }
            let sum = e.reduce(0, +)
            out += e.map { $0 / sum }
        }
        return out
    }

    func testTokenRouterRestrictedToCandidates() {
        assertValues(tokenRouterProbabilities(taskPrior: false), expectedTokenProbabilities(taskPrior: false), "p (hard mask)")
    }

    func testTokenRouterWithTaskPriorIsTheHierarchicalProduct() {
        assertValues(tokenRouterProbabilities(taskPrior: true), expectedTokenProbabilities(taskPrior: true), "p ∝ q·exp(z)")
    }

    // MARK: L_tok_lb and L_dyn (SPEC §3)

    /// Four rows: three tokens with 1, 2 and 3 selected experts and a padding row whose `p` and
    /// selection must not count (they are non-zero here on purpose).
    let p: [[Double]] = [[0.6, 0.3, 0.1, 0.0],
                         [0.2, 0.5, 0.0, 0.3],
                         [0.25, 0.25, 0.25, 0.25],
                         [0.1, 0.2, 0.3, 0.4]]
    let selected: [[Int]] = [[0], [1, 3], [2], [3, 2, 1]]
    let mask: [Float] = [1, 1, 0, 1]

    func decision() -> RoutingDecision {
        let d = RoutingDecision(rows: 4, slots: 3, renormalized: false)
        for (t, s) in selected.enumerated() {
            d.count[t] = Int32(s.count)
            for (i, e) in s.enumerated() { d.experts[t * 3 + i] = Int32(e); d.weights[t * 3 + i] = Float(p[t][e]) }
        }
        return d
    }

    /// `L_tok_lb = N · Σ_e f_e · P_e`, `f_e` = count of assignments to e / Σ_t |S_t| (non-pad tokens),
    /// `P_e` = mean of `p_{t,e}` over non-pad tokens; `∂/∂p_{t,e} = N·f_e / tokens` on non-pad rows.
    func testTokenBalanceLossValueAndGradient() {
        let tokens = (0..<4).filter { mask[$0] != 0 }
        let assignments = tokens.reduce(0) { $0 + selected[$1].count }
        var loss = 0.0
        var coef = [Double](repeating: 0, count: n)
        for e in 0..<n {
            let f = Double(tokens.filter { selected[$0].contains(e) }.count) / Double(assignments)
            let pe = tokens.reduce(0.0) { $0 + p[$1][e] } / Double(tokens.count)
            loss += f * pe
            coef[e] = Double(n) * f / Double(tokens.count)
        }
        loss *= Double(n)
        // By hand: f = (1, 2, 1, 2)/6, P = (0.9, 1.0, 0.4, 0.7)/3 → L = 4·(0.9 + 2 + 0.4 + 1.4)/18.
        XCTAssertEqual(loss, 4 * 4.7 / 18, accuracy: 1e-12, "the loop reproduces the hand value")

        let scale: Float = 0.25
        let dp = Tensor(shape: [4, n])
        let got = mask.withUnsafeBufferPointer {
            TokenRouter.tokenBalance(p: tensor(p), decision: decision(), mask: $0.baseAddress!, scale: scale, dp: dp)
        }
        XCTAssertEqual(got, loss, accuracy: 1e-6, "L_tok_lb")
        var want: [Double] = []
        for t in 0..<4 { want += coef.map { mask[t] != 0 ? Double(scale) * $0 : 0 } }
        assertValues(dp, want, accuracy: 1e-6, "scale · ∂L_tok_lb/∂p")
    }

    /// `L_dyn` = mean over non-pad tokens of `−Σ_e p_e log p_e` (0·log 0 = 0);
    /// `∂/∂p_{t,e} = −(log p_e + 1) / tokens` where `p_e > 0`.
    func testDynamicLossValueAndGradient() {
        let tokens = (0..<4).filter { mask[$0] != 0 }
        var h = 0.0
        for t in tokens { for e in 0..<n where p[t][e] > 0 { h -= p[t][e] * Foundation.log(p[t][e]) } }
        h /= Double(tokens.count)
        let scale: Float = 0.5
        let dp = Tensor(shape: [4, n])
        let got = mask.withUnsafeBufferPointer {
            TokenRouter.entropy(p: tensor(p), mask: $0.baseAddress!, scale: scale, dp: dp)
        }
        XCTAssertEqual(got, h, accuracy: 1e-6, "L_dyn")
        var want: [Double] = []
        for t in 0..<4 {
            want += (0..<n).map { e in
                mask[t] != 0 && p[t][e] > 0 ? -Double(scale) * (Foundation.log(p[t][e]) + 1) / Double(tokens.count) : 0
            }
        }
        assertValues(dp, want, accuracy: 1e-5, "scale · ∂L_dyn/∂p")
    }

    /// One token spread evenly over 4 experts has entropy log 4; one expert alone, 0.
    func testDynamicLossOfUniformAndOneHotRows() {
        let rows = tensor([[0.25, 0.25, 0.25, 0.25], [0, 1, 0, 0]])
        let one: [Float] = [1, 0], other: [Float] = [0, 1]
        XCTAssertEqual(one.withUnsafeBufferPointer { TokenRouter.entropy(p: rows, mask: $0.baseAddress!, scale: 0, dp: nil) },
                       Foundation.log(4), accuracy: 1e-6)
        XCTAssertEqual(other.withUnsafeBufferPointer { TokenRouter.entropy(p: rows, mask: $0.baseAddress!, scale: 0, dp: nil) },
                       0, accuracy: 1e-7)
    }
}
