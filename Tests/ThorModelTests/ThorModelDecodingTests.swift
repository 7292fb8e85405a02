import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// Incremental decoding and beam search of the whole THOR model (Transformer + MoE layers):
/// every routing variant's cached decoder equals its full forward pass, and beam search keeps
/// each hypothesis's task representation, prefix context and task label in step with its row.
final class ThorModelDecodingTests: XCTestCase {
    static let vocabulary = 13

    func smallModel() -> TransformerConfiguration {
        TransformerConfiguration(vocabularySize: Self.vocabulary, modelDim: 8, hiddenDim: 6, heads: 2, encoderLayers: 2,
                                 decoderLayers: 2, activation: .relu, dropout: 0.1, attentionDropout: 0.1,
                                 maxPositions: 24, padID: 0)
    }

    /// Three pairs of different lengths and tasks (padding on both sides).
    func smallBatch() -> Seq2SeqBatch {
        let c = ThorTokens.cls, e = ThorTokens.eos, b = ThorTokens.bos
        return Seq2SeqBatch(sources: [[c, 5, 6, 7, e], [c, 8, e], [c, 9, 10, 4, 11, 12, e]],
                            targets: [[b, 9, 4, e], [b, 10, 5, 6, 7, 12, e], [b, 8, 11, e]],
                            pad: ThorTokens.pad, taskLabels: [2, 0, 1])
    }

    func routing(_ v: RoutingVariant, moeEvery: Int = 1) -> RoutingConfiguration {
        RoutingConfiguration(variant: v, experts: 4, candidates: 2, threshold: 0.6, moeEvery: moeEvery,
                             sharedExperts: v == .top2 || v == .hard ? 1 : 0, tasks: 3)
    }

    /// Largest difference between the full pass's logits and the cached decoder's, over real target positions.
    func incrementalError(_ m: ThorModelUnderTest, _ batch: Seq2SeqBatch) throws -> Float {
        let v = Self.vocabulary, t = batch.targetLength
        try m.transformer.forward(batch, training: false)
        let full = Tensor(copying: m.transformer.lastLogits!)
        let enc = try m.transformer.encode(batch)
        let cache = try m.transformer.makeCache(for: enc, maxLength: t)
        var worst: Float = 0
        for step in 0..<t {
            let tokens = (0..<batch.batchSize).map { batch.targetInput[$0 * t + step] }
            let logits = try m.transformer.decodeStep(tokens, cache: cache)
            for b in 0..<batch.batchSize where batch.targetMask[b * t + step] > 0 {
                worst = max(worst, Kernels.maxAbsDifference(logits.pointer + b * v, full.pointer + (b * t + step) * v, count: v))
            }
        }
        return worst
    }

    /// Cached decoding reproduces the full forward pass (logits within 1e-5) for one routing configuration.
    func checkIncrementalDecoding(_ r: RoutingConfiguration, _ label: String) throws {
        let m = try ThorModelUnderTest(model: smallModel(), routing: r, seed: 31)
        XCTAssertEqual(m.moe.layers.count, r.variant == .dense ? 0 : (r.moeEvery == 1 ? 4 : 2), label)
        let worst = try incrementalError(m, smallBatch())
        XCTAssertLessThanOrEqual(worst, 1e-5, "\(label): incremental vs full logits")
        // The decoder MoE layers really routed one position at a time.
        if let last = m.moe.layers.last, r.variant != .dense {
            XCTAssertEqual(last.side, .decoder, label)
            XCTAssertEqual(last.lastDecision?.rows, 3, label)
        }
    }

    // Cached decoding equals the full forward pass in every routing variant (one test each).
    func testIncrementalDecodingDense() throws { try checkIncrementalDecoding(routing(.dense), RoutingVariant.dense.rawValue) }
    func testIncrementalDecodingTop1() throws { try checkIncrementalDecoding(routing(.top1), RoutingVariant.top1.rawValue) }
    func testIncrementalDecodingTop2() throws { try checkIncrementalDecoding(routing(.top2), RoutingVariant.top2.rawValue) }
    func testIncrementalDecodingTopP() throws { try checkIncrementalDecoding(routing(.topp), RoutingVariant.topp.rawValue) }
    func testIncrementalDecodingThorTopK() throws { try checkIncrementalDecoding(routing(.thorTopK), RoutingVariant.thorTopK.rawValue) }
    func testIncrementalDecodingThorTopP() throws { try checkIncrementalDecoding(routing(.thorTopP), RoutingVariant.thorTopP.rawValue) }
    func testIncrementalDecodingNoTaskLevel() throws { try checkIncrementalDecoding(routing(.noTaskLevel), RoutingVariant.noTaskLevel.rawValue) }
    func testIncrementalDecodingNoContext() throws { try checkIncrementalDecoding(routing(.noContext), RoutingVariant.noContext.rawValue) }
    func testIncrementalDecodingGold() throws { try checkIncrementalDecoding(routing(.gold), RoutingVariant.gold.rawValue) }
    func testIncrementalDecodingNonMixed() throws { try checkIncrementalDecoding(routing(.nonMixed), RoutingVariant.nonMixed.rawValue) }
    func testIncrementalDecodingInfuse() throws { try checkIncrementalDecoding(routing(.infuse), RoutingVariant.infuse.rawValue) }
    func testIncrementalDecodingHard() throws { try checkIncrementalDecoding(routing(.hard), RoutingVariant.hard.rawValue) }
    func testEveryVariantHasAnIncrementalDecodingTest() {
        let covered: Set<RoutingVariant> = [.dense, .top1, .top2, .topp, .thorTopK, .thorTopP, .noTaskLevel, .noContext, .gold, .nonMixed, .infuse, .hard]
        XCTAssertEqual(covered, Set(RoutingVariant.allCases), "add a testIncrementalDecoding… method for the new variant")
    }

    func testIncrementalDecodingThorTopPHardMask() throws {
        var mask = routing(.thorTopP); mask.taskPrior = false
        try checkIncrementalDecoding(mask, "thor-topp, hard mask (task_prior = false)")
    }

    func testIncrementalDecodingWithMatchStateContextNorm() throws {
        for v in [RoutingVariant.thorTopP, .noTaskLevel, .infuse] {
            var r = routing(v); r.contextNorm = .matchState
            try checkIncrementalDecoding(r, "\(v.rawValue), context_norm = match-state")
        }
    }

    func testIncrementalDecodingThorTopKEveryOtherLayer() throws {
        try checkIncrementalDecoding(routing(.thorTopK, moeEvery: 2), "thor-topk/every2")
    }

    func testIncrementalDecodingThorTopPWithCapacityAndMaxExperts() throws {
        var capped = routing(.thorTopP); capped.capacityFactor = 1; capped.maxExperts = 2
        try checkIncrementalDecoding(capped, "thor-topp+capacity(train only)+max_experts")
    }

    /// After `reorder`, each row continues the hypothesis it was taken from: the next step's
    /// logits equal those of the un-reordered cache's source rows (task representation,
    /// prefix sums and task labels move with the KV cache).
    func checkReorderMovesTheMoEStateWithTheRow(_ v: RoutingVariant) throws {
        let m = try ThorModelUnderTest(model: smallModel(), routing: routing(v), seed: 41)
        let enc = try m.transformer.encode(smallBatch())
        let reference = try m.transformer.makeCache(for: enc, maxLength: 4)
        let moved = try m.transformer.makeCache(for: enc, maxLength: 4)
        _ = try m.transformer.decodeStep([ThorTokens.bos, ThorTokens.bos, ThorTokens.bos], cache: reference)
        _ = try m.transformer.decodeStep([ThorTokens.bos, ThorTokens.bos, ThorTokens.bos], cache: moved)
        let rows = [2, 0, 0, 1, 2]
        try m.transformer.reorder(moved, by: rows)
        let next: [Int32] = [9, 5, 6]
        let want = try m.transformer.decodeStep(next, cache: reference)
        let got = try m.transformer.decodeStep(rows.map { next[$0] }, cache: moved)
        XCTAssertEqual(got.shape, [5, Self.vocabulary])
        let vv = Self.vocabulary
        for (i, r) in rows.enumerated() {
            XCTAssertLessThanOrEqual(Kernels.maxAbsDifference(got.pointer + i * vv, want.pointer + r * vv, count: vv), 1e-5,
                                     "\(v.rawValue): row \(i) (from \(r))")
        }
        XCTAssertEqual(moved.taskLabels, [1, 2, 2, 0, 1])
    }

    func testReorderMovesTheMoEStateWithTheRowThorTopP() throws { try checkReorderMovesTheMoEStateWithTheRow(.thorTopP) }
    func testReorderMovesTheMoEStateWithTheRowGold() throws { try checkReorderMovesTheMoEStateWithTheRow(.gold) }
    func testReorderMovesTheMoEStateWithTheRowHard() throws { try checkReorderMovesTheMoEStateWithTheRow(.hard) }
    func testReorderMovesTheMoEStateWithTheRowInfuse() throws { try checkReorderMovesTheMoEStateWithTheRow(.infuse) }

    /// Beam 1 is greedy decoding for THOR variants (untrained model: long outputs, many ties broken alike).
    func checkBeamOneEqualsGreedy(_ v: RoutingVariant) throws {
        let m = try ThorModelUnderTest(model: smallModel(), routing: routing(v), seed: 51)
        let enc = try m.transformer.encode(smallBatch())
        let greedy = try m.transformer.greedyDecode(enc, bos: ThorTokens.bos, eos: ThorTokens.eos, maxLength: 14)
        let beam1 = try m.transformer.beamSearch(enc, beamSize: 1, bos: ThorTokens.bos, eos: ThorTokens.eos, maxLength: 14)
        XCTAssertEqual(beam1, greedy, v.rawValue)
        XCTAssertTrue(greedy.contains { !$0.isEmpty }, "\(v.rawValue): some output expected")
    }

    func testBeamOneEqualsGreedyThorTopP() throws { try checkBeamOneEqualsGreedy(.thorTopP) }
    func testBeamOneEqualsGreedyThorTopK() throws { try checkBeamOneEqualsGreedy(.thorTopK) }

    /// Beam search on briefly trained THOR models (300 steps) (so that outputs are varied and scores close):
    /// beam 1 equals greedy; beam 3 over two sentences of different tasks gives well-formed
    /// output, and each sentence's result equals decoding it alone and does not depend on its
    /// row in the batch (task representation, prefix context and task label follow the beams).
    func checkBeamSearchOnTrainedModel(_ v: RoutingVariant) throws {
        let model = TransformerConfiguration(vocabularySize: SyntheticDomains.vocabulary, modelDim: 16, hiddenDim: 16, heads: 2,
                                             encoderLayers: 2, decoderLayers: 2, activation: .relu, dropout: 0,
                                             attentionDropout: 0, maxPositions: 16, padID: 0)
        let train = SyntheticDomains.pairs(1600, seed: 71), test = SyntheticDomains.pairs(6, seed: 72)
        let b = ThorTokens.bos, e = ThorTokens.eos
        func encoded(_ idx: [Int], _ m: ThorModelUnderTest) throws -> EncodedSource {
            try m.transformer.encode(SyntheticDomains.batch(ArraySlice(idx.map { test[$0] })))
        }
        let r = RoutingConfiguration(variant: v, experts: 4, candidates: 2, threshold: 0.6, moeEvery: 1,
                                     tasks: SyntheticDomains.domains)
        let m = try ThorModelUnderTest(model: model, routing: r, seed: 73)
        _ = try m.train(train, steps: 300, batchSize: 16, peak: 5e-3, warmup: 30)
        let all = try encoded(Array(0..<6), m)
        let greedy = try m.transformer.greedyDecode(all, bos: b, eos: e, maxLength: 10)
        XCTAssertEqual(try m.transformer.beamSearch(all, beamSize: 1, bos: b, eos: e, maxLength: 10), greedy, v.rawValue)

        // sentences 0 and 1 have domains 0 and 1
        let both = try m.transformer.beamSearch(try encoded([0, 1], m), beamSize: 3, bos: b, eos: e, maxLength: 10)
        guard both.count == 2 else { return XCTFail("\(v.rawValue): \(both.count) results for 2 sentences") }
        for h in both {
            XCTAssertLessThanOrEqual(h.count, 10, v.rawValue)
            XCTAssertTrue(h.allSatisfy { $0 > ThorTokens.eos && Int($0) < SyntheticDomains.vocabulary }, "\(v.rawValue): \(h)")
        }
        XCTAssertGreaterThan(Set(both.flatMap { $0 }).count, 2, "\(v.rawValue): degenerate output \(both)")
        let alone0 = try m.transformer.beamSearch(try encoded([0], m), beamSize: 3, bos: b, eos: e, maxLength: 10)
        let alone1 = try m.transformer.beamSearch(try encoded([1], m), beamSize: 3, bos: b, eos: e, maxLength: 10)
        XCTAssertEqual(both, alone0 + alone1, "\(v.rawValue): batched beam search differs from one sentence at a time")
        let swapped = try m.transformer.beamSearch(try encoded([1, 0], m), beamSize: 3, bos: b, eos: e, maxLength: 10)
        XCTAssertEqual(swapped, [both[1], both[0]], v.rawValue)
        print("[ThorModelDecodingTests] \(v.rawValue) after 300 steps: beam 3 \(both), references \([0, 1].map { Array(test[$0].target.dropFirst().dropLast()) })")
    }

    func testBeamSearchOnTrainedModelThorTopP() throws { try checkBeamSearchOnTrainedModel(.thorTopP) }
    func testBeamSearchOnTrainedModelThorTopK() throws { try checkBeamSearchOnTrainedModel(.thorTopK) }
    func testBeamSearchOnTrainedModelGold() throws { try checkBeamSearchOnTrainedModel(.gold) }
    func testBeamSearchOnTrainedModelHard() throws { try checkBeamSearchOnTrainedModel(.hard) }
}

extension ThorModelDecodingTests {
    /// An `EncodedSource` decodes the same whatever was encoded or run after it: the decoder
    /// MoE layers must use the task representation of *this* source, not the task level's last one.
    func checkEncodedSourceKeepsItsOwnTaskRepresentation(_ v: RoutingVariant) throws {
        let c = ThorTokens.cls, e = ThorTokens.eos, b = ThorTokens.bos
        let a = Seq2SeqBatch(sources: [[c, 5, 6, e], [c, 7, 8, 9, e]], targets: [[b, e], [b, e]], pad: ThorTokens.pad, taskLabels: [0, 1])
        let other = Seq2SeqBatch(sources: [[c, 10, 11, 12, e], [c, 4, e]], targets: [[b, e], [b, e]], pad: ThorTokens.pad, taskLabels: [2, 2])
        let m = try ThorModelUnderTest(model: smallModel(), routing: routing(v), seed: 81)
        let encA = try m.transformer.encode(a)
        let fresh = try m.transformer.decodeStep([b, b], cache: try m.transformer.makeCache(for: encA, maxLength: 3))
        _ = try m.transformer.encode(other)                         // a later encode …
        let late = try m.transformer.decodeStep([b, b], cache: try m.transformer.makeCache(for: encA, maxLength: 3))
        XCTAssertEqual(Kernels.maxAbsDifference(late.pointer, fresh.pointer, count: late.count), 0, "\(v.rawValue): after another encode")
        try m.transformer.forward(other, training: true)            // … or a training forward
        let afterTraining = try m.transformer.greedyDecode(encA, bos: b, eos: e, maxLength: 6)
        _ = try m.transformer.encode(a)
        XCTAssertEqual(afterTraining, try m.transformer.greedyDecode(encA, bos: b, eos: e, maxLength: 6), "\(v.rawValue): after a training forward")
    }

    func testEncodedSourceKeepsItsOwnTaskRepresentationThorTopP() throws { try checkEncodedSourceKeepsItsOwnTaskRepresentation(.thorTopP) }
    func testEncodedSourceKeepsItsOwnTaskRepresentationGold() throws { try checkEncodedSourceKeepsItsOwnTaskRepresentation(.gold) }
    func testEncodedSourceKeepsItsOwnTaskRepresentationNonMixed() throws { try checkEncodedSourceKeepsItsOwnTaskRepresentation(.nonMixed) }
    func testEncodedSourceKeepsItsOwnTaskRepresentationInfuse() throws { try checkEncodedSourceKeepsItsOwnTaskRepresentation(.infuse) }
}
