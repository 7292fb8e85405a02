import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorData
import ThorCheckpoint
import ThorTraining

/// A tiny THOR top-p run on a small built-in corpus: seconds per test.
func tinyConfiguration(workers: Int = 0, variant: RoutingVariant = .thorTopP) -> ThorConfiguration {
    var c = ThorConfiguration.quickstart
    c.model.modelDim = 16
    c.model.hiddenDim = 32
    c.model.heads = 2
    c.model.maxPositions = 64
    c.routing.variant = variant
    c.routing.experts = 4
    c.training.maxTokensPerBatch = 256
    c.training.warmupSteps = 10
    c.cluster.workers = workers
    c.cluster.expertThreads = 1
    c.data.syntheticPairs = 300
    c.data.syntheticEvalPairsPerTask = 3
    c.data.vocabularySize = 300
    c.evaluation.maxOutputLength = 12
    return c
}

/// Data, model and trainer for `c` (experts in process or on a local cluster).
final class Setup {
    let data: TranslationData
    let configuration: ThorConfiguration
    let runtime: ExpertRuntime
    let model: TranslationModel
    let trainer: Trainer

    init(_ c: ThorConfiguration, checkpoint: RunCheckpoint? = nil, workers: Int? = nil) throws {
        data = try TranslationData.load(c.data, seed: c.training.seed, maxPositions: c.model.maxPositions,
                                        tokenizer: checkpoint?.tokenizer, tasks: checkpoint?.state.tasks)
        var r = c
        r.model.vocabularySize = data.tokenizer.vocabularySize
        r.routing.tasks = data.tasks.count
        configuration = r
        runtime = try ExpertRuntime(configuration: r, workers: workers ?? r.cluster.workers, threads: 1)
        model = try TranslationModel(configuration: r, backend: runtime.backend)
        trainer = try Trainer(model: model, data: data, checkpoint: checkpoint)
    }

    /// Every coordinator and expert tensor (weights and moments) by name.
    func snapshot() throws -> [String: Tensor] {
        var s: [String: Tensor] = [:]
        for p in model.parameters {
            s[p.name] = Tensor(copying: p.value); s[p.name + ".m"] = Tensor(copying: p.m); s[p.name + ".v"] = Tensor(copying: p.v)
        }
        for (_, tensors) in try model.backend.exportState() { for (n, t) in tensors { s[n] = t } }
        return s
    }
}

func assertBitwiseEqual(_ a: [String: Tensor], _ b: [String: Tensor], _ what: String,
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.keys.sorted(), b.keys.sorted(), what, file: file, line: line)
    var differing: [String] = []
    for (k, t) in a { if let u = b[k], !t.bitwiseEqual(u) { differing.append(k) } }
    XCTAssertTrue(differing.isEmpty, "\(what): \(differing.count) tensors differ, e.g. \(differing.sorted().prefix(3))",
                  file: file, line: line)
}

final class TrainingTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-training-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// Training lowers the loss, and the same seed gives the same losses bit for bit.
    func testTrainingIsDeterministicAndLearns() throws {
        func losses() throws -> [Double] {
            let s = try Setup(tinyConfiguration())
            return try (0..<80).map { _ in try s.trainer.trainStep().loss }
        }
        let a = try losses(), b = try losses()
        XCTAssertEqual(a, b)
        XCTAssertLessThan(a.suffix(5).reduce(0, +), 0.8 * a.prefix(5).reduce(0, +), "loss should fall: \(a.prefix(5)) … \(a.suffix(5))")
    }

    /// Save at step 3, continue to step 5; a fresh process loading the checkpoint and
    /// running steps 4–5 ends with the same bits (weights, moments, losses).
    func testResumeFromCheckpointIsBitIdentical() throws {
        let c = tinyConfiguration()
        let a = try Setup(c)
        for _ in 0..<3 { try a.trainer.trainStep() }
        let dir = scratch + "/ck"
        try a.trainer.saveCheckpoint(to: dir)
        let lossesA = try (0..<2).map { _ in try a.trainer.trainStep().loss }

        let ck = try RunCheckpoint(directory: dir)
        XCTAssertEqual(ck.state.step, 3)
        let b = try Setup(ck.configuration, checkpoint: ck)
        XCTAssertEqual(b.trainer.step, 3)
        let lossesB = try (0..<2).map { _ in try b.trainer.trainStep().loss }
        XCTAssertEqual(lossesA, lossesB)
        assertBitwiseEqual(try a.snapshot(), try b.snapshot(), "resumed run")
    }

    /// The checkpoint is plain safetensors: coordinator tensors and one file per expert.
    func testCheckpointFilesAreSafetensors() throws {
        let a = try Setup(tinyConfiguration())
        try a.trainer.trainStep()
        let dir = scratch + "/ck"
        try a.trainer.saveCheckpoint(to: dir)
        let coordinator = try SafeTensorsFile.read(path: dir + "/coordinator.safetensors")
        XCTAssertNotNil(coordinator.entries["embedding.weight"])
        XCTAssertNotNil(coordinator.entries["embedding.weight.adam_m"])
        XCTAssertEqual(coordinator.metadata["format"], RunCheckpoint.format)
        let keys = TranslationModel.expertKeys(for: a.configuration)
        XCTAssertEqual(keys.count, 2 * 4)
        for k in keys {
            let f = try SafeTensorsFile.read(path: dir + "/" + RunCheckpoint.expertFile(k))
            XCTAssertEqual(f.entries["\(k.parameterPrefix).w1"]?.shape, [16, 32])
        }
    }

    /// A truncated or corrupt checkpoint gets an error naming the file; the model is unchanged.
    func testCorruptCheckpointIsRejectedAndChangesNothing() throws {
        let a = try Setup(tinyConfiguration())
        try a.trainer.trainStep()
        let dir = scratch + "/ck"
        try a.trainer.saveCheckpoint(to: dir)
        let b = try Setup(tinyConfiguration())
        let before = try b.snapshot()

        // Truncated expert file.
        let expert = dir + "/" + RunCheckpoint.expertFile(ExpertKey(layer: 1, expert: 2))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: expert))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: expert))
        XCTAssertThrowsError(try RunCheckpoint(directory: dir)) { error in  // the manifest's SHA-256 no longer matches
            XCTAssertTrue("\(error)".contains("moe-1-expert-2") && "\(error)".contains("SHA-256"), "\(error)")
        }
        try CheckpointManifest.write(directory: dir)  // past the checksum: the reader itself must refuse it
        let ck = try RunCheckpoint(directory: dir)
        XCTAssertThrowsError(try ck.restore(into: b.model)) { error in
            XCTAssertTrue("\(error)".contains("moe-1-expert-2"), "\(error)")
        }
        assertBitwiseEqual(before, try b.snapshot(), "model after a rejected checkpoint")

        // Garbage coordinator file.
        try Data("not a safetensors file".utf8).write(to: URL(fileURLWithPath: dir + "/coordinator.safetensors"))
        try CheckpointManifest.write(directory: dir)
        XCTAssertThrowsError(try RunCheckpoint(directory: dir)) { error in
            XCTAssertTrue("\(error)".contains("coordinator.safetensors"), "\(error)")
        }
        XCTAssertThrowsError(try RunCheckpoint(directory: scratch + "/missing")) { error in
            XCTAssertTrue("\(error)".contains("not a checkpoint directory"), "\(error)")
        }
    }

    /// Evaluation reports BLEU per task, experts per token and task accuracy.
    func testEvaluationReportsEveryTask() throws {
        let a = try Setup(tinyConfiguration())
        for _ in 0..<5 { try a.trainer.trainStep() }
        let report = try Evaluator.evaluate(a.model, tokenizer: a.data.tokenizer, corpus: a.data.test,
                                            pairs: a.data.testPairs, options: DecodingOptions(a.configuration))
        XCTAssertEqual(report.tasks, a.data.tasks)
        XCTAssertEqual(report.bleu.compactMap { $0 }.count, a.data.tasks.count)
        XCTAssertEqual(report.sentences, a.data.testPairs.count)
        let e = try XCTUnwrap(report.expertsPerToken)
        XCTAssertGreaterThanOrEqual(e, 1)
        XCTAssertLessThanOrEqual(e, 4)
        XCTAssertNotNil(report.taskAccuracy)
        XCTAssertEqual(report.taskMatrix.count, a.data.tasks.count)
        XCTAssertTrue(report.table(title: "t").contains("task accuracy"))
    }
}
