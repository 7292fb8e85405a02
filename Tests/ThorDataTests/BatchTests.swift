import Foundation
import XCTest
import ThorData
import ThorTensor

final class BatchTests: XCTestCase {
    static let setup: (SyntheticCorpus, BPETokenizer, EncodedCorpus) = {
        var k = SyntheticCorpus.Configuration(); k.trainSize = 1_000; k.devSizePerDomain = 10; k.testSizePerDomain = 10
        let c = try! SyntheticCorpus(configuration: k)
        let t = try! BPETokenizer.learn(from: c.train.flatMap { [$0.source, $0.target] }, vocabularySize: 500)
        let e = try! EncodedCorpus(pairs: c.train, tokenizer: t, tasks: c.tasks)
        return (c, t, e)
    }()

    func testPairLayout() throws {
        let t = try BPETokenizer(tags: ["<2en>"])
        let c = try EncodedCorpus(pairs: [TranslationPair(task: "de", source: "ab", target: "c")], tokenizer: t,
                                  tasks: ["fr", "de"], tags: ["de": "<2en>"])
        let p = c.pairs[0]
        let a = t.byteOffset + 97
        XCTAssertEqual(p.task, 1)
        XCTAssertEqual(p.source, [SpecialTokens.cls, 4, a, a + 1, SpecialTokens.eos])
        XCTAssertEqual(p.targetInput, [SpecialTokens.bos, a + 2])
        XCTAssertEqual(p.targetOutput, [a + 2, SpecialTokens.eos])
        XCTAssertThrowsError(try EncodedCorpus(pairs: [TranslationPair(task: "xx", source: "a", target: "b")], tokenizer: t, tasks: ["de"]))
        XCTAssertThrowsError(try EncodedCorpus(pairs: [], tokenizer: t, tasks: ["de"], tags: ["de": "<2zz>"]))
        let d = try EncodedCorpus(pairs: [TranslationPair(task: "de", source: "abcdef", target: "c")], tokenizer: t, tasks: ["de"], maxLength: 4)
        XCTAssertEqual(d.pairs.count, 0)
        XCTAssertEqual(d.droppedForLength, 1)
    }

    func testBatchPaddingAndMasks() {
        let p1 = EncodedPair(task: 0, sourceTokens: [10, 11, 12], targetTokens: [20])
        let p2 = EncodedPair(task: 1, sourceTokens: [13], targetTokens: [21, 22, 23])
        let b = Seq2SeqBatch(pairs: [p1, p2], indices: [5, 9])
        XCTAssertEqual(b.batchSize, 2); XCTAssertEqual(b.sourceLength, 5); XCTAssertEqual(b.targetLength, 4)
        XCTAssertEqual(b.source, [3, 10, 11, 12, 2, 3, 13, 2, 0, 0])
        XCTAssertEqual(b.sourceMask, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
        XCTAssertEqual(b.targetInput, [1, 20, 0, 0, 1, 21, 22, 23])
        XCTAssertEqual(b.targetOutput, [20, 2, 0, 0, 21, 22, 23, 2])
        XCTAssertEqual(b.targetMask, [1, 1, 0, 0, 1, 1, 1, 1])
        XCTAssertEqual(b.taskLabels, [0, 1])
        XCTAssertEqual(b.indices, [5, 9])
        XCTAssertEqual(b.paddedTokens, 10)
        XCTAssertEqual(b.targetTokens, 6)
    }

    func testEvaluationBatchesRespectBudgetAndCoverCorpus() {
        let (_, _, e) = Self.setup
        let batches = Batching.evaluationBatches(e, maxTokens: 300)
        XCTAssertEqual(batches.flatMap(\.indices).sorted(), Array(e.pairs.indices))
        for b in batches { XCTAssertLessThanOrEqual(b.paddedTokens, 300) }
        // sorted by length: little padding
        let real = batches.reduce(0) { $0 + Int($1.sourceMask.reduce(0, +)) }
        let padded = batches.reduce(0) { $0 + $1.source.count }
        XCTAssertGreaterThan(Double(real) / Double(padded), 0.9)
        XCTAssertEqual(Batching.evaluationBatches(e, maxTokens: 300), batches)
        // an over-long sentence gets a batch of its own
        XCTAssertTrue(Batching.group([0, 1], of: e, maxTokens: 1).allSatisfy { $0.count == 1 })
    }

    func testTaskSamplerTemperature() throws {
        let sizes = [1000, 500, 300, 200]
        let t1 = try TaskSampler(taskSizes: sizes, temperature: 1, seed: 1)
        XCTAssertEqual(t1.probabilities[0], 0.5, accuracy: 1e-12)
        var s = try TaskSampler(taskSizes: sizes, seed: 1)  // default 1.5
        let w = sizes.map { pow(Double($0), 1 / 1.5) }
        for i in 0..<4 { XCTAssertEqual(s.probabilities[i], w[i] / w.reduce(0, +), accuracy: 1e-12) }
        let uniform = try TaskSampler(taskSizes: sizes, temperature: 1e9, seed: 1)
        for p in uniform.probabilities { XCTAssertEqual(p, 0.25, accuracy: 1e-6) }
        var hist = [0, 0, 0, 0]
        for _ in 0..<20_000 { hist[s.next()] += 1 }
        for i in 0..<4 { XCTAssertEqual(Double(hist[i]) / 20_000, s.probabilities[i], accuracy: 0.015) }
        // a task without data is never drawn
        var z = try TaskSampler(taskSizes: [0, 5], seed: 3)
        for _ in 0..<100 { XCTAssertEqual(z.next(), 1) }
        XCTAssertThrowsError(try TaskSampler(taskSizes: [0, 0], seed: 1))
        XCTAssertThrowsError(try TaskSampler(taskSizes: [1], temperature: 0, seed: 1))
        // restoring the state reproduces the draws
        let saved = s.state
        let a = (0..<50).map { _ in s.next() }
        s.state = saved
        XCTAssertEqual((0..<50).map { _ in s.next() }, a)
    }

    func testTrainingBatchesResumeBitIdentically() throws {
        let (_, _, e) = Self.setup
        var a = try TrainingBatches(corpus: e, maxTokens: 400, seed: 11, epochSize: 300)
        var run: [Seq2SeqBatch] = []
        var positions: [DataPosition] = []
        for _ in 0..<60 { positions.append(a.position); run.append(a.next()) }  // spans several epochs
        XCTAssertGreaterThan(positions.last!.epoch, 1)
        for cut in [0, 7, 23, 59] {
            do {  // a cut that fails to restore is named and the others still run
                var b = try TrainingBatches(corpus: e, maxTokens: 400, seed: 11, epochSize: 300)
                // round-trip the position through JSON, as a checkpoint would
                let json = try JSONEncoder().encode(positions[cut])
                try b.restore(JSONDecoder().decode(DataPosition.self, from: json))
                for i in cut..<60 { XCTAssertEqual(b.next(), run[i], "batch \(i) after resuming at \(cut)") }
            } catch { XCTFail("resuming at \(cut): \(error)") }
        }
        var c = try TrainingBatches(corpus: e, maxTokens: 400, seed: 12, epochSize: 300)
        XCTAssertNotEqual(c.next(), run[0])
        for b in run { XCTAssertLessThanOrEqual(b.paddedTokens, 400) }
        var bad = positions[3]; bad.taskCursors = [1]
        XCTAssertThrowsError(try c.restore(bad))
        // a position past its epoch's batches is refused and changes nothing: the stream goes on as before
        var reference = try TrainingBatches(corpus: e, maxTokens: 400, seed: 12, epochSize: 300)
        _ = reference.next()
        var far = positions[3]; far.batch = 10_000
        XCTAssertThrowsError(try c.restore(far))
        for i in 0..<60 { XCTAssertEqual(c.next(), reference.next(), "batch \(i + 1) after a refused restore") }
    }

    func testTrainingBatchesFollowTemperature() throws {
        let (_, _, e) = Self.setup
        var s = try TrainingBatches(corpus: e, maxTokens: 500, temperature: 5, seed: 3)
        var hist = [Int](repeating: 0, count: e.tasks.count)
        var total = 0
        while total < 4_000 { let b = s.next(); for t in b.taskLabels ?? [] { hist[t] += 1 }; total += b.batchSize }
        for i in 0..<hist.count {
            XCTAssertEqual(Double(hist[i]) / Double(total), s.taskProbabilities[i], accuracy: 0.03)
        }
        // the smallest task is upsampled relative to its share of the data
        XCTAssertGreaterThan(Double(hist[3]) / Double(total), 0.1 + 0.05)
    }
}
