import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// `routing.task_warmup_steps`: while the task level is off, a THOR top-p stack routes exactly like
/// `no-task-level` with the same gate, router and experts (every expert a candidate, no `log q`,
/// no `L_task_lb`, no gradient to the task routers); once on, exactly like THOR top-p without warm-up.
final class TaskWarmupTests: XCTestCase {
    func routing(_ v: RoutingVariant, warmup: Int = 0) -> RoutingConfiguration {
        var r = RoutingConfiguration(variant: v, experts: 4, candidates: 2, threshold: 0.5, moeEvery: 1, tasks: 3)
        if v.usesTaskMask { r.taskWarmupSteps = warmup }
        return r
    }

    /// Copies every parameter of `to` that `from` has under the same name (gate, router, shared).
    func copyShared(from: MoEHarness, to: MoEHarness) {
        let source = Dictionary(uniqueKeysWithValues: from.stack.parameters.map { ($0.name, $0) })
        for p in to.stack.parameters { p.value.copy(from: source[p.name]!.value) }
    }

    func decisions(_ h: MoEHarness) -> [[Int]] {
        h.layers.map { l in (0..<l.lastDecision!.rows).flatMap { l.lastDecision!.selected($0) + [-1] } }
    }

    func testStepsInsideTheWarmupRouteLikeNoTaskLevel() throws {
        let thor = try MoEHarness(routing: routing(.thorTopP, warmup: 2))
        let plain = try MoEHarness(routing: routing(.noTaskLevel))
        copyShared(from: thor, to: plain)
        for done in [0, 1] {   // before steps 1 and 2
            thor.stack.activateTaskLevel(afterSteps: done)
            XCTAssertTrue(thor.layers.allSatisfy { !$0.taskLevelActive }, "after \(done) steps")
            let lossThor = try thor.loss(), lossPlain = try plain.loss()
            XCTAssertTrue(thor.layers.allSatisfy { $0.lastTaskRouting == nil }, "no candidate sets during the warm-up")
            XCTAssertEqual(decisions(thor), decisions(plain), "selections after \(done) steps")
            for (a, b) in zip(thor.layers, plain.layers) {
                XCTAssertTrue(a.lastProbabilities!.bitwiseEqual(b.lastProbabilities!), "\(a.name): p")
            }
            let auxThor = thor.stack.auxiliaryLosses, auxPlain = plain.stack.auxiliaryLosses
            XCTAssertNil(auxThor.taskBalance)
            XCTAssertEqual(auxThor.tokenBalance, auxPlain.tokenBalance)
            XCTAssertEqual(auxThor.dynamic, auxPlain.dynamic)
            // The task predictor still trains: the losses differ by α L_task only.
            XCTAssertEqual(lossThor - lossPlain, Double(thor.losses.alpha) * auxThor.task!, accuracy: 1e-9)
        }
        // Gradients: the layers' shared parameters get the same gradient, the task routers none.
        let dxThor = try thor.backward(), dxPlain = try plain.backward()
        let plainGrads = Dictionary(uniqueKeysWithValues: plain.stack.parameters.map { ($0.name, $0.grad) })
        for p in thor.stack.parameters {
            if p.name.hasSuffix("task_router.w") {
                XCTAssertTrue((0..<p.count).allSatisfy { p.grad[$0] == 0 }, "\(p.name) has a gradient during the warm-up")
            } else if let g = plainGrads[p.name] {
                assertValues(p.grad, (0..<g.count).map { Double(g[$0]) }, accuracy: 1e-6, p.name)
            }
        }
        // x of layers 1 and 2 feed no task predictor: same input gradients as no-task-level.
        for i in [1, 2] { assertValues(dxThor[i], (0..<dxPlain[i].count).map { Double(dxPlain[i][$0]) }, accuracy: 1e-6, "x\(i)") }
        // The warm-up's backward against finite differences (every parameter and input).
        for p in thor.stack.parameters {
            try checkRoutedGradient("warm-up \(p.name)", of: p.value, analytic: p.grad, harness: thor)
        }
        for (i, x) in [thor.xEnc1, thor.xEnc2, thor.xDec].enumerated() {
            try checkRoutedGradient("warm-up x\(i)", of: x, analytic: dxThor[i], harness: thor)
        }
    }

    func testStepsAfterTheWarmupRouteLikeThorTopP() throws {
        let warm = try MoEHarness(routing: routing(.thorTopP, warmup: 2))
        let thor = try MoEHarness(routing: routing(.thorTopP))
        warm.stack.activateTaskLevel(afterSteps: 1)
        _ = try warm.loss()
        let inside = decisions(warm)
        for done in [2, 3, 50] {
            warm.stack.activateTaskLevel(afterSteps: done)
            XCTAssertTrue(warm.layers.allSatisfy(\.taskLevelActive), "after \(done) steps")
            XCTAssertEqual(try warm.loss(), try thor.loss(), "loss after \(done) steps")
            XCTAssertEqual(warm.signature(), thor.signature(), "routing choices after \(done) steps")
            XCTAssertNotNil(warm.stack.auxiliaryLosses.taskBalance)
            for l in warm.layers {
                let tr = try XCTUnwrap(l.lastTaskRouting), dec = l.lastDecision!
                for t in 0..<dec.rows {
                    let allowed = tr.candidateSet(t / (dec.rows / tr.batch))
                    XCTAssertTrue(dec.selected(t).allSatisfy(allowed.contains), "\(l.name) token \(t) outside its candidates")
                }
            }
        }
        // With K = 2 of 4 the mask matters: the warm-up's choices are not THOR top-p's.
        XCTAssertNotEqual(inside, decisions(warm))
        // A stack without warm-up is active whatever the step count.
        thor.stack.activateTaskLevel(afterSteps: 0)
        XCTAssertTrue(thor.layers.allSatisfy(\.taskLevelActive))
    }
}
