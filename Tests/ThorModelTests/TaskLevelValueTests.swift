import Foundation
import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// Values of the task level (SPEC §2.1–2.2, `L_task` of §3) and of the per-layer means of the
/// auxiliary losses, on hand-made cases against the formulas worked out here.
///
/// These go through `TaskLevel` and `MoEStack`/`MoELayer`, whose interfaces are being
/// reshaped (issue 8, item 3: `r` passed into each MoE layer); everything that depends on those
/// types is kept in this file. The lower-level functions are pinned in `RoutingValueTests`,
/// `ContextValueTests` and `FeedForwardValueTests`.
final class TaskLevelValueTests: XCTestCase {
    let d = 3, tasks = 2
    /// Two sentences of three positions. Sentence 0 ends in padding whose large values would win
    /// the max if it were counted; sentence 1 has an all-negative column (its max is −0.5, not 0).
    let x: [[Double]] = [[1.0, -2.0, 0.5],
                         [-1.0, 3.0, 0.25],
                         [100, 100, 100],
                         [0.5, -1.0, 2.0],
                         [-0.5, -3.0, 1.0],
                         [2.5, -0.5, -1.0]]
    let mask: [Float] = [1, 1, 0, 1, 1, 1]
    let labels = [1, 0]
    /// `W_t` [d, T] (`logits = u · W_t + b_t`), `b_t` [T], `E_task` [T, d].
    let wt: [[Double]] = [[0.5, -0.25], [0.1, 0.3], [-0.4, 0.2]]
    let bt: [Double] = [0.05, -0.1]
    let embeddings: [[Double]] = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.25]]

    func taskLevel(_ kind: TaskRepresentation) throws -> TaskLevel {
        let tl = TaskLevel(modelDim: d, tasks: tasks, kind: kind, lossWeight: 1, seed: 1)
        fill(tl.predictorWeight.value, wt); fill(tl.predictorBias.value, [bt]); fill(tl.embeddings.value, embeddings)
        let layout = TokenLayout(side: .encoder, batchSize: 2, length: 3, mask: mask, taskLabels: labels)
        try tl.forward(tensor(x), layout: layout, training: true)
        return tl
    }

    /// `u_b = maxpool_t(h_t)` over the non-pad positions of sentence b.
    var pooled: [[Double]] {
        (0..<2).map { s in
            let rows = (0..<3).map { s * 3 + $0 }.filter { mask[$0] != 0 }
            return (0..<d).map { j in rows.map { x[$0][j] }.max()! }
        }
    }

    /// `P_task = softmax(W_t u + b_t)`.
    var probabilities: [[Double]] {
        pooled.map { u in softmax(zip(rowTimes(u, wt), bt).map { $0 + $1 }) }
    }

    func testMaxPoolOverNonPadPositionsFeedsThePredictor() throws {
        XCTAssertEqual(pooled, [[1.0, 3.0, 0.5], [2.5, -0.5, 2.0]], "the loop reproduces the hand values")
        let tl = try taskLevel(.mixed)
        assertValues(tl.probabilities!, probabilities.flatMap { $0 }, "P_task")
        XCTAssertEqual(tl.predictions, probabilities.map { $0[1] > $0[0] ? 1 : 0 }, "argmax P_task")
    }

    /// Mixed: `r = Σ_τ P_task[τ] · E_task[τ]`.
    func testMixedRepresentation() throws {
        let p = probabilities
        let want = p.flatMap { pb in (0..<d).map { j in (0..<tasks).reduce(0.0) { $0 + pb[$1] * embeddings[$1][j] } } }
        assertValues(try taskLevel(.mixed).representation!, want, "r (mixed)")
    }

    /// Gold: `r = E_task[gold]`; non-mixed: `r = E_task[argmax P_task]`.
    func testGoldAndArgmaxRepresentations() throws {
        assertValues(try taskLevel(.gold).representation!, labels.flatMap { embeddings[$0] }, "r (gold)")
        let argmax = probabilities.map { $0[1] > $0[0] ? 1 : 0 }
        assertValues(try taskLevel(.argmax).representation!, argmax.flatMap { embeddings[$0] }, "r (argmax)")
    }

    /// `L_task` = mean over sentences of `−log P_task[gold]`.
    func testTaskLossIsTheMeanCrossEntropy() throws {
        let p = probabilities
        let want = labels.enumerated().reduce(0.0) { $0 - Foundation.log(p[$1.offset][$1.element]) } / Double(labels.count)
        XCTAssertEqual(try taskLevel(.mixed).loss!, want, accuracy: 1e-6, "L_task")
    }

    // MARK: means over the MoE layers

    /// `L_task_lb`, `L_tok_lb` and `L_dyn` of the stack are the means over its MoE layers of each
    /// layer's value, recomputed here from that layer's q, candidates, p and selection.
    func testStackLossesAreMeansOverMoELayersOfTheSpecFormulas() throws {
        let routing = RoutingConfiguration(variant: .thorTopP, experts: 4, candidates: 2, threshold: 0.5, moeEvery: 1, tasks: 3)
        let h = try MoEHarness(routing: routing)
        _ = try h.loss()
        var taskBalance: [Double] = [], tokenBalance: [Double] = [], dynamic: [Double] = []
        for (layer, layout) in zip(h.layers, [h.encLayout, h.encLayout, h.decLayout]) {
            let n = 4
            let tr = try XCTUnwrap(layer.lastTaskRouting), p = try XCTUnwrap(layer.lastProbabilities)
            let dec = try XCTUnwrap(layer.lastDecision)
            // L_task_lb
            var lb = 0.0
            for e in 0..<n {
                let f = Double((0..<tr.batch).filter { tr.candidateSet($0).contains(e) }.count) / Double(tr.batch * tr.k)
                let pe = (0..<tr.batch).reduce(0.0) { $0 + Double(tr.q[$1 * n + e]) } / Double(tr.batch)
                lb += f * pe
            }
            taskBalance.append(Double(n) * lb)
            // L_tok_lb and L_dyn over non-pad tokens
            let tokens = (0..<layout.rows).filter { layout.mask[$0] != 0 }
            let assignments = tokens.reduce(0) { $0 + dec.selected($1).count }
            var tb = 0.0, entropy = 0.0
            for e in 0..<n {
                let f = Double(tokens.filter { dec.selected($0).contains(e) }.count) / Double(assignments)
                let pe = tokens.reduce(0.0) { $0 + Double(p[$1 * n + e]) } / Double(tokens.count)
                tb += f * pe
            }
            for t in tokens {
                for e in 0..<n where p[t * n + e] > 0 { entropy -= Double(p[t * n + e]) * Foundation.log(Double(p[t * n + e])) }
            }
            tokenBalance.append(Double(n) * tb)
            dynamic.append(entropy / Double(tokens.count))
        }
        let aux = h.stack.auxiliaryLosses
        func mean(_ v: [Double]) -> Double { v.reduce(0, +) / Double(v.count) }
        XCTAssertEqual(aux.taskBalance!, mean(taskBalance), accuracy: 1e-6, "L_task_lb")
        XCTAssertEqual(aux.tokenBalance!, mean(tokenBalance), accuracy: 1e-6, "L_tok_lb")
        XCTAssertEqual(aux.dynamic!, mean(dynamic), accuracy: 1e-6, "L_dyn")
        // the weighted sum added to L_mt
        let w = h.losses
        XCTAssertEqual(aux.weighted(by: w),
                       Double(w.alpha) * aux.task! + Double(w.beta) * mean(taskBalance)
                           + Double(w.gamma) * mean(tokenBalance) + Double(w.delta) * mean(dynamic), accuracy: 1e-6)
    }
}
