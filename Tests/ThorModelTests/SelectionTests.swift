import XCTest
import ThorTensor
import ThorExperts
import ThorModel

final class SelectionTests: XCTestCase {
    func decide(_ p: [Float], experts n: Int, _ f: (UnsafePointer<Float>, Int, UnsafePointer<Float>) -> RoutingDecision) -> RoutingDecision {
        let rows = p.count / n
        let mask = [Float](repeating: 1, count: rows)
        return p.withUnsafeBufferPointer { pp in mask.withUnsafeBufferPointer { mp in f(pp.baseAddress!, rows, mp.baseAddress!) } }
    }

    func testTopKTiesPreferLowerIdAndWeights() {
        let p: [Float] = [0.3, 0.1, 0.3, 0.3]
        let d1 = decide(p, experts: 4) { Selection.topK($0, rows: $1, experts: 4, k: 1, mask: $2) }
        XCTAssertEqual(d1.selected(0), [0])
        XCTAssertEqual(d1.weight(0, 0), 0.3)   // raw for k = 1
        let d2 = decide(p, experts: 4) { Selection.topK($0, rows: $1, experts: 4, k: 2, mask: $2) }
        XCTAssertEqual(d2.selected(0), [0, 2])
        XCTAssertEqual(d2.weight(0, 0), 0.5, accuracy: 1e-6)  // renormalized for k ≥ 2
        XCTAssertEqual(d2.weight(0, 1), 0.5, accuracy: 1e-6)
    }

    func testTopKWithKEqualToCandidatesSelectsAllCandidatesOnly() {
        // candidates {1, 3}: zeros elsewhere
        let p: [Float] = [0, 0.7, 0, 0.3]
        let d = decide(p, experts: 4) { Selection.topK($0, rows: $1, experts: 4, k: 2, mask: $2) }
        XCTAssertEqual(d.selected(0), [1, 3])
        XCTAssertEqual(d.weight(0, 0), 0.7, accuracy: 1e-6)
    }

    func testTopPShortestPrefixStrictlyAboveThreshold() {
        let p: [Float] = [0.25, 0.5, 0.25, 0]
        // 0.5 is not > 0.5: the next (tie 0.25 → lower id 0) crosses
        let d = decide(p, experts: 4) { Selection.topP($0, rows: $1, experts: 4, threshold: 0.5, maxExperts: nil, mask: $2) }
        XCTAssertEqual(d.selected(0), [1, 0])
        XCTAssertEqual(d.weight(0, 0), 0.5); XCTAssertEqual(d.weight(0, 1), 0.25)   // raw weights
        let d2 = decide(p, experts: 4) { Selection.topP($0, rows: $1, experts: 4, threshold: 0.4, maxExperts: nil, mask: $2) }
        XCTAssertEqual(d2.selected(0), [1])
    }

    func testTopPThresholdNeverCrossedTakesAllCandidates() {
        // Σ p = 1 in Float is not strictly > 1: every non-zero (candidate) expert, never a non-candidate
        let p: [Float] = [0.2, 0, 0.5, 0.3, 0]
        let d = decide(p, experts: 5) { Selection.topP($0, rows: $1, experts: 5, threshold: 1, maxExperts: nil, mask: $2) }
        XCTAssertEqual(d.selected(0), [2, 3, 0])
    }

    func testTopPMaxExpertsCapsKeepingRawWeights() {
        let p: [Float] = [0.3, 0.3, 0.2, 0.2]
        let d = decide(p, experts: 4) { Selection.topP($0, rows: $1, experts: 4, threshold: 0.9, maxExperts: 2, mask: $2) }
        XCTAssertEqual(d.selected(0), [0, 1])
        XCTAssertEqual(d.weight(0, 1), 0.3)
    }

    func testPaddingRowsSelectNothing() {
        let p: [Float] = [0.5, 0.5, 0.9, 0.1]
        let mask: [Float] = [1, 0]
        let d = p.withUnsafeBufferPointer { pp in mask.withUnsafeBufferPointer { Selection.topK(pp.baseAddress!, rows: 2, experts: 2, k: 1, mask: $0.baseAddress!) } }
        XCTAssertEqual(d.selected(1), [])
    }

    func testCapacityDropsLaterTokensInBatchOrder() {
        // 4 tokens, top-1, all to expert 0 but the last: 4 assignments, N = 2, cf = 1 → capacity 2
        let p: [Float] = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.4, 0.6]
        let d = decide(p, experts: 2) { Selection.topK($0, rows: $1, experts: 2, k: 1, mask: $2) }
        XCTAssertEqual(Selection.applyCapacity(d, factor: 1, experts: 2), 2)
        XCTAssertEqual((0..<4).map { d.keptExperts($0) }, [[0], [0], [], [1]])
        XCTAssertEqual(d.selected(2), [0])   // the choice is kept for the balance loss
        XCTAssertEqual(d.weight(0, 0), 0.9)  // weights not renormalized
        XCTAssertEqual(d.keptAssignments, 3)
        // cf = 1.5 → ceil(1.5·4/2) = 3
        let e = decide(p, experts: 2) { Selection.topK($0, rows: $1, experts: 2, k: 1, mask: $2) }
        XCTAssertEqual(Selection.applyCapacity(e, factor: 1.5, experts: 2), 3)
        XCTAssertEqual(e.keptAssignments, 4)
    }

    func testHardRoutingUsesFixedExpertsPerTask() {
        let mask: [Float] = [1, 1, 1, 0]
        let d = mask.withUnsafeBufferPointer { Selection.hard(labels: [0, 3], length: 2, experts: 5, k: 2, mask: $0.baseAddress!) }
        XCTAssertEqual(d.selected(0), [0, 1])
        XCTAssertEqual(d.selected(2), [1, 2])   // (3·2 + j) mod 5
        XCTAssertEqual(d.selected(3), [])
        XCTAssertEqual(d.weight(2, 1), 0.5)
    }

    /// In the MoE layer, experts outside the task-level candidates are never selected,
    /// candidates follow TopK(q, K).
    func checkLayerNeverSelectsOutsideCandidates(_ v: RoutingVariant) throws {
        let r = RoutingConfiguration(variant: v, experts: 6, candidates: 3, threshold: 0.95, moeEvery: 1, tasks: 3)
        let h = try MoEHarness(routing: r)
        _ = try h.loss()
        for l in h.layers {
            let tr = l.lastTaskRouting!, dec = l.lastDecision!
            let len = dec.rows / tr.batch
            for b in 0..<tr.batch {
                let c = tr.candidateSet(b)
                XCTAssertEqual(c.count, 3, "\(v) layer \(l.name) sentence \(b)")
                let q = (0..<6).map { tr.q[b * 6 + $0] }
                XCTAssertEqual(Set(c), Set(q.indices.sorted { q[$0] > q[$1] || (q[$0] == q[$1] && $0 < $1) }.prefix(3)),
                               "\(v) layer \(l.name) sentence \(b): candidates are TopK(q, 3)")
                for t in b * len..<(b + 1) * len {
                    XCTAssertTrue(Set(dec.selected(t)).isSubset(of: Set(c)), "\(v): \(dec.selected(t)) outside \(c)")
                    for e in 0..<6 where !c.contains(e) { XCTAssertEqual(l.lastProbabilities![t * 6 + e], 0, "\(v) p[\(t), \(e)]") }
                }
            }
        }
    }

    func testLayerNeverSelectsOutsideCandidatesThorTopP() throws { try checkLayerNeverSelectsOutsideCandidates(.thorTopP) }
    func testLayerNeverSelectsOutsideCandidatesThorTopK() throws { try checkLayerNeverSelectsOutsideCandidates(.thorTopK) }

    /// Capacity in training drops assignments, at most `ceil(cf · assignments / N)` kept per expert.
    func testLayerCapacityDropsAssignmentsInTraining() throws {
        let capped = try MoEHarness(routing: RoutingConfiguration(variant: .top2, experts: 4, capacityFactor: 0.5, moeEvery: 1))
        _ = try capped.loss()
        let dec = capped.layers[0].lastDecision!
        var selected = 0
        for t in 0..<dec.rows { selected += dec.selected(t).count }
        XCTAssertLessThan(dec.keptAssignments, selected)
        XCTAssertLessThanOrEqual(dec.keptAssignments, 4 * Int((0.5 * Double(selected) / 4).rounded(.up)))
    }
}
