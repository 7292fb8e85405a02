import XCTest
import ThorTensor
import ThorExperts
import ThorModel

final class RoutingStatisticsTests: XCTestCase {
    func testHandMadeCase() {
        // Layer 0: 2 sentences × 2 positions, last one padding; tasks [1, 0].
        let d0 = RoutingDecision(rows: 4, slots: 2, renormalized: false)
        func set(_ d: RoutingDecision, _ t: Int, _ e: [Int], kept: [Int32]? = nil) {
            d.count[t] = Int32(e.count)
            for (s, x) in e.enumerated() { d.experts[t * 2 + s] = Int32(x); d.kept[t * 2 + s] = kept?[s] ?? 1 }
        }
        set(d0, 0, [0, 1]); set(d0, 1, [2]); set(d0, 2, [1, 2], kept: [1, 0])
        var s = RoutingStatistics(layers: 2, experts: 3, tasks: 2)
        s.record(layer: 0, decision: d0, mask: [1, 1, 1, 0], length: 2, labels: [1, 0])
        // Layer 1: one sentence of task 0, one token with 2 experts, one with 1.
        let d1 = RoutingDecision(rows: 2, slots: 2, renormalized: false)
        set(d1, 0, [0, 2]); set(d1, 1, [0])
        var other = RoutingStatistics(layers: 2, experts: 3, tasks: 2)
        other.record(layer: 1, decision: d1, mask: [1, 1], length: 2, labels: [0])
        s.merge(other)
        // layer 0: (2 + 1 + 1)/3 ; layer 1: 3/2 ; mean of layers
        XCTAssertEqual(s.expertsPerToken(layer: 0)!, 4.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(s.expertsPerToken(layer: 1)!, 1.5, accuracy: 1e-12)
        XCTAssertEqual(s.expertsPerToken()!, (4.0 / 3 + 1.5) / 2, accuracy: 1e-12)
        // per task: task 1 = layer 0 tokens 0,1 → 1.5 (layer 1 has none); task 0: layer 0 → 1, layer 1 → 1.5
        XCTAssertEqual(s.expertsPerToken(task: 1)!, 1.5, accuracy: 1e-12)
        XCTAssertEqual(s.expertsPerToken(task: 0)!, 1.25, accuracy: 1e-12)
        XCTAssertEqual(s.load[0], [1, 2, 1])
        XCTAssertEqual(s.loadShare(layer: 1), [2.0 / 3, 0, 1.0 / 3])
        // task × expert usage: share of each task's tokens each expert served (kept only; rows sum to experts/token)
        XCTAssertEqual(s.taskExpertUsage(layer: 0), [[0, 1, 0], [0.5, 0.5, 0.5]])
        XCTAssertEqual(s.taskExpertUsage(layer: 1), [[1, 0, 0.5], [0, 0, 0]])
        XCTAssertEqual(s.taskLoad[0][2], [0, 0, 0])                     // no unlabelled tokens
        s.recordPredictions([1, 0, 0, 1], gold: [1, 1, 0, 0])
        s.recordPredictions([0], gold: nil)
        XCTAssertEqual(s.taskAccuracy!, 0.5, accuracy: 1e-12)
        XCTAssertEqual(s.taskMatrix, [[1, 1], [1, 1]])
        XCTAssertEqual(s.normalizedTaskMatrix, [[0.5, 0.5], [0.5, 0.5]])
    }

    /// The stack collects over forwards while collection is on, and not otherwise.
    func testStackCollectsStatistics() throws {
        let h = try MoEHarness(routing: RoutingConfiguration(variant: .hard, experts: 4, k: 2, moeEvery: 1, tasks: 3))
        _ = try h.loss()
        XCTAssertNil(h.stack.takeStatistics())
        h.stack.startCollectingStatistics()
        _ = try h.loss(); _ = try h.loss()
        let s = try XCTUnwrap(h.stack.takeStatistics())
        XCTAssertEqual(s.expertsPerToken()!, 2, accuracy: 1e-12)       // hard routing: exactly k
        XCTAssertEqual(s.tokens[0].reduce(0, +), 2 * 7)                 // 7 non-pad encoder tokens, twice
        // decoder: task 2 → experts (2·2 + j) mod 4 = {0, 1}, task 0 → {0, 1}; 5 tokens, twice
        XCTAssertEqual(s.load[2], [10, 10, 0, 0])
        XCTAssertNil(s.taskAccuracy)
    }
}
