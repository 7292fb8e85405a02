import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorCluster
import ThorTraining

/// The decoder-only (prefix-LM) model in the training stack: selected by `model.architecture`,
/// trained over real `thor worker` processes bit for bit like in process, checkpointed with its
/// architecture and resumed bit for bit.
final class PrefixLMTrainingTests: XCTestCase {
    func decoderOnly() -> ThorConfiguration {
        var c = tinyConfiguration()
        c.model.architecture = .decoderOnly
        return c
    }

    func testArchitectureSelectsTheNetworkAndIsValidated() throws {
        let s = try Setup(decoderOnly())
        XCTAssertTrue(s.model.network is PrefixLMTransformer)
        XCTAssertNil(s.model.transformer)
        XCTAssertEqual(s.model.moe.layers.map(\.name), ["decoder.layers.1.moe", "decoder.layers.3.moe"], "moe_every 2 over 2 + 2 layers")
        XCTAssertTrue(try Setup(tinyConfiguration()).model.network is Transformer, "encoder-decoder stays the default")
        XCTAssertEqual(ThorConfiguration().model.architecture, .encoderDecoder)
        XCTAssertThrowsError(try ThorConfiguration().applying(overrides: ["model.architecture": "decoder"])) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("model.architecture") && m.contains("encoder-decoder") && m.contains("decoder-only"), m)
        }
        let c = try ThorConfiguration().applying(overrides: ["model.architecture": "decoder-only"])
        XCTAssertEqual(c.model.architecture, .decoderOnly)
        XCTAssertTrue(c.jsonString.contains("\"architecture\": \"decoder-only\"") || c.jsonString.contains("\"architecture\":\"decoder-only\""), c.jsonString)
    }

    /// Training lowers the loss and evaluation decodes (greedy and beam) with the decoder-only model.
    func testDecoderOnlyTrainsAndEvaluates() throws {
        let s = try Setup(decoderOnly())
        let losses = try (0..<60).map { _ in try s.trainer.trainStep().loss }
        XCTAssertLessThan(losses.suffix(5).reduce(0, +), 0.8 * losses.prefix(5).reduce(0, +), "\(losses.prefix(5)) … \(losses.suffix(5))")
        for beam in [1, 2] {
            var options = DecodingOptions(s.configuration)
            options.beamSize = beam
            let report = try Evaluator.evaluate(s.model, tokenizer: s.data.tokenizer, corpus: s.data.dev,
                                                pairs: s.data.devPairs, options: options)
            XCTAssertEqual(report.hypotheses.count, report.sentences)
            XCTAssertNotNil(report.expertsPerToken); XCTAssertNotNil(report.taskAccuracy)
            print("[PrefixLMTrainingTests] after 60 steps, beam \(beam): dev BLEU \(report.averageBLEU), loss \(report.loss), "
                  + "experts/token \(report.expertsPerToken ?? 0), task accuracy \(report.taskAccuracy ?? 0)")
        }
    }

    /// Three steps over 2 worker processes equal the in-process run bit for bit (losses, coordinator
    /// weights and moments, expert weights and moments).
    func testDecoderOnlyDistributedTrainingOnTwoWorkersMatchesInProcessBitForBit() throws {
        let c = decoderOnly()
        let reference = try Setup(c)
        let expected = try (0..<3).map { _ in try reference.trainer.trainStep().loss }
        let expectedState = try reference.snapshot()
        let s = try Setup(c, workers: 2)
        defer { s.runtime.shutdown() }
        XCTAssertNotNil(s.runtime.cluster)
        let losses = try (0..<3).map { _ in try s.trainer.trainStep().loss }
        XCTAssertEqual(losses, expected)
        assertBitwiseEqual(expectedState, try s.snapshot(), "decoder-only, 2 workers")
    }

    /// The checkpoint records the architecture; resuming (in process and on 2 workers) continues bit for bit.
    func testDecoderOnlyCheckpointRecordsTheArchitectureAndResumesBitForBit() throws {
        let a = try Setup(decoderOnly())
        for _ in 0..<3 { try a.trainer.trainStep() }
        let dir = NSTemporaryDirectory() + "thor-prefixlm-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try a.trainer.saveCheckpoint(to: dir)
        let lossesA = try (0..<2).map { _ in try a.trainer.trainStep().loss }
        let config = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        XCTAssertTrue(config.contains("decoder-only"), config)

        let ck = try RunCheckpoint(directory: dir)
        XCTAssertEqual(ck.configuration.model.architecture, .decoderOnly)
        for workers in [0, 2] {
            let b = try Setup(ck.configuration, checkpoint: ck, workers: workers)
            defer { b.runtime.shutdown() }
            XCTAssertTrue(b.model.network is PrefixLMTransformer)
            let lossesB = try (0..<2).map { _ in try b.trainer.trainStep().loss }
            XCTAssertEqual(lossesA, lossesB, "\(workers) workers")
            assertBitwiseEqual(try a.snapshot(), try b.snapshot(), "resumed on \(workers) workers")
        }
        // A decoder-only checkpoint does not load into an encoder-decoder model.
        var other = ck.configuration
        other.model.architecture = .encoderDecoder
        let runtime = try ExpertRuntime(configuration: other, workers: 0, threads: 1)
        let model = try TranslationModel(configuration: other, backend: runtime.backend)
        XCTAssertThrowsError(try ck.restore(into: model))
    }
}
