import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorData
import ThorCheckpoint
import ThorTraining

/// Issue 9: checkpoints prove their integrity, non-finite values stop training,
/// the memory estimate refuses what cannot fit, corpus problems are named.
final class IntegrityTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-integrity-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func savedCheckpoint() throws -> (Setup, String) {
        let a = try Setup(tinyConfiguration())
        try a.trainer.trainStep()
        let dir = scratch + "/ck"
        try a.trainer.saveCheckpoint(to: dir)
        return (a, dir)
    }

    func flipByte(_ path: String) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 7] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Every file of a checkpoint is covered by manifest.json: one flipped bit in any of them,
    /// an added file or a missing manifest is refused, naming the file.
    func testChangedAddedOrUnlistedCheckpointFilesAreRefusedByName() throws {
        let (_, dir) = try savedCheckpoint()
        XCTAssertNoThrow(try RunCheckpoint(directory: dir))
        try FileManager.default.createSymbolicLink(atPath: scratch + "/last", withDestinationPath: "ck")  // like checkpoint-last
        XCTAssertNoThrow(try RunCheckpoint(directory: scratch + "/last"))
        let files = ["coordinator.safetensors", RunCheckpoint.expertFile(ExpertKey(layer: 1, expert: 2)),
                     "config.json", "tokenizer.json", "state.json"]
        for (i, file) in files.enumerated() {
            let copy = scratch + "/copy\(i)"
            try FileManager.default.copyItem(atPath: dir, toPath: copy)
            try flipByte(copy + "/" + file)
            XCTAssertThrowsError(try RunCheckpoint(directory: copy), file) { e in
                XCTAssertTrue("\(e)".contains(file) && "\(e)".contains("SHA-256") && "\(e)".contains("refusing"), "\(e)")
            }
        }
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/experts/moe-9-expert-9.safetensors"))
        XCTAssertThrowsError(try RunCheckpoint(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("moe-9-expert-9.safetensors is not listed"), "\(e)")
        }
        try FileManager.default.removeItem(atPath: dir + "/experts/moe-9-expert-9.safetensors")
        try FileManager.default.removeItem(atPath: dir + "/manifest.json")
        XCTAssertThrowsError(try RunCheckpoint(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("manifest.json is missing"), "\(e)")
        }
    }

    /// A NaN weight in a checkpoint (with a matching manifest) is refused on load, naming the
    /// tensor, and the model stays as it was.
    func testNaNWeightInCheckpointIsRefusedNamingTheTensor() throws {
        let (_, dir) = try savedCheckpoint()
        let b = try Setup(tinyConfiguration())
        let before = try b.snapshot()
        let nan = withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { Array($0) }
        for (file, tensor) in [(RunCheckpoint.expertFile(ExpertKey(layer: 0, expert: 1)), "moe.0.experts.1.w2"),
                               ("coordinator.safetensors", "embedding.weight")] {
            let path = dir + "/" + file
            let original = try Data(contentsOf: URL(fileURLWithPath: path))
            var f = try SafeTensorsFile.read(path: path)
            f.entries[tensor]!.bytes.replaceSubrange(12..<16, with: nan)
            try f.write(to: path)
            try CheckpointManifest.write(directory: dir)
            let ck = try RunCheckpoint(directory: dir)
            XCTAssertThrowsError(try ck.restore(into: b.model)) { e in
                XCTAssertTrue("\(e)".contains("\(tensor)[3] = nan") && "\(e)".contains("not finite"), "\(e)")
            }
            assertBitwiseEqual(before, try b.snapshot(), "model after a refused NaN checkpoint")
            try original.write(to: URL(fileURLWithPath: path))
            try CheckpointManifest.write(directory: dir)
        }
        XCTAssertNoThrow(try RunCheckpoint(directory: dir).restore(into: b.model))
    }

    /// A non-finite loss stops training naming the step and the first non-finite weight;
    /// nothing is updated.
    func testNonFiniteLossStopsNamingStepAndTensor() throws {
        let s = try Setup(tinyConfiguration())
        try s.trainer.trainStep(); try s.trainer.trainStep()
        let p = s.model.parameters.first { $0.name == "embedding.weight" }!
        for i in 0..<p.count { p.value.pointer[i] = .nan }
        XCTAssertThrowsError(try s.trainer.trainStep()) { e in
            XCTAssertTrue("\(e)".contains("loss") && "\(e)".contains("step 3") && "\(e)".contains("embedding.weight[0] = nan"), "\(e)")
        }
        XCTAssertEqual(s.trainer.step, 2)
    }

    /// A non-finite gradient norm stops the step before any weight changes, naming the gradient.
    func testNonFiniteGradientStopsBeforeAnyUpdate() throws {
        let s = try Setup(tinyConfiguration())
        try s.trainer.trainStep()
        let p = s.model.parameters[s.model.parameters.count / 2]
        p.grad.pointer[1] = .infinity  // backward accumulates into it
        let before = try s.snapshot()
        XCTAssertThrowsError(try s.trainer.trainStep()) { e in
            XCTAssertTrue("\(e)".contains("gradient norm") && "\(e)".contains("step 2") && "\(e)".contains("\(p.name).grad[1] = inf"), "\(e)")
        }
        assertBitwiseEqual(before, try s.snapshot(), "weights after a non-finite gradient")
        XCTAssertEqual(s.trainer.step, 1)
    }

    /// The memory estimate refuses a model that cannot fit and absurd worker counts before
    /// anything starts, and accepts the small configurations.
    func testMemoryEstimateRefusesWhatCannotFit() throws {
        var warnings: [String] = []
        XCTAssertNoThrow(try ResourceEstimate(tinyConfiguration(workers: 2)).check { warnings.append($0) })
        XCTAssertNoThrow(try ResourceEstimate(ThorConfiguration.quickstart).check { warnings.append($0) })
        XCTAssertEqual(warnings, [])

        var big = ThorConfiguration.quickstart
        big.model.modelDim = 16384
        let e = ResourceEstimate(big)
        XCTAssertGreaterThan(e.coordinatorBytes, 16 * 8000 * 16384 * 2, "embeddings alone")
        XCTAssertThrowsError(try e.check(available: 64e9) { _ in }) { error in
            XCTAssertTrue("\(error)".contains("estimated coordinator") && "\(error)".contains("59.6 GiB of memory is available"), "\(error)")
        }
        // Tiny runs fit in a few hundred MiB; one byte less than the estimate is refused.
        let tiny = ResourceEstimate(tinyConfiguration(workers: 2))
        XCTAssertLessThan(tiny.localBytes(externalWorkers: false), 512e6)
        XCTAssertThrowsError(try tiny.check(available: tiny.localBytes(externalWorkers: false) - 1) { _ in })
        XCTAssertNoThrow(try tiny.check(available: tiny.localBytes(externalWorkers: false)) { _ in })

        // tiny: 4 experts per MoE layer × 2 MoE layers.
        XCTAssertThrowsError(try ResourceEstimate(tinyConfiguration(workers: 1000)).check { _ in }) { error in
            XCTAssertTrue("\(error)".contains("cluster.workers is 1000") && "\(error)".contains("at most 8 workers"), "\(error)")
        }
        try ResourceEstimate(tinyConfiguration(workers: 6)).check { warnings.append($0) }
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings.first?.contains("6 workers for 4 experts per MoE layer") ?? false, "\(warnings)")
    }

    /// Over-long lines are skipped and reported with their count and first file:line, in the
    /// training set and in dev/test alike (dev/test used to abort without naming the line);
    /// references stay aligned with the kept pairs.
    func testOverLongLinesAreCountedAndReportedInEverySplit() throws {
        let words = ["the", "court", "ruled", "patient", "network", "server", "prayer", "temple"]
        func line(_ i: Int, long: Bool = false) -> String {
            let n = long ? 400 : 3 + i % 4
            let s = (0..<n).map { words[($0 + i) % words.count] }.joined(separator: " ")
            return "\(i % 2 == 0 ? "law" : "it")\t\(s)\t\(s)"
        }
        let train = (0..<40).map { line($0, long: $0 == 6 || $0 == 20) }.joined(separator: "\n") + "\n"
        let dev = (0..<4).map { line($0, long: $0 == 1) }.joined(separator: "\n") + "\n"
        for (n, t) in [("train", train), ("dev", dev), ("test", dev)] {
            try t.write(toFile: scratch + "/\(n).tsv", atomically: true, encoding: .utf8)
        }
        var c = tinyConfiguration().data
        c.train = scratch + "/train.tsv"; c.dev = scratch + "/dev.tsv"; c.test = scratch + "/test.tsv"
        c.vocabularySize = 280
        let data = try TranslationData.load(c, seed: 1, maxPositions: 64)
        XCTAssertEqual(data.train.pairs.count, 38)
        XCTAssertEqual(data.dev.pairs.count, 3)
        XCTAssertEqual(data.devPairs.count, 3)
        XCTAssertEqual(data.devPairs.map(\.source), [0, 2, 3].map { String(line($0).split(separator: "\t")[1]) })
        XCTAssertEqual(data.warnings.count, 3, "\(data.warnings)")
        XCTAssertTrue(data.warnings[0].hasPrefix("2 lines over the limit") && data.warnings[0].hasSuffix("first at \(c.train):7"), data.warnings[0])
        XCTAssertTrue(data.warnings[1].hasPrefix("1 line over the limit") && data.warnings[1].hasSuffix("first at \(c.dev):2"), data.warnings[1])
    }

    /// A directory given as a corpus gets a plain-language error naming it.
    func testDirectoryAsCorpusIsNamedPlainly() throws {
        var c = tinyConfiguration().data
        c.train = scratch; c.dev = scratch; c.test = scratch
        XCTAssertThrowsError(try TranslationData.load(c, seed: 1, maxPositions: 64)) { e in
            XCTAssertEqual("\(e)", "\(scratch!): is a directory, not a corpus file (give the path of a task<TAB>source<TAB>target file)")
        }
        c.train = scratch + "/nothing.tsv"
        XCTAssertThrowsError(try TranslationData.load(c, seed: 1, maxPositions: 64)) { e in
            XCTAssertEqual("\(e)", "\(scratch!)/nothing.tsv: no such file")
        }
    }

    /// `translate` truncates an over-long line with a warning for that line only.
    func testTranslateTruncatesAnOverLongLineWithAWarning() throws {
        let (_, dir) = try savedCheckpoint()
        let translator = try Translator(checkpoint: dir)
        let long = Array(repeating: "the court ruled", count: 200).joined(separator: " ")
        var warnings: [String] = []
        let out = try translator.translate(["the court", long, "the patient"], tasks: [nil, nil, nil],
                                           options: DecodingOptions(beamSize: 1, lengthPenalty: 1, maxOutputLength: 8, maxTokens: 4096),
                                           warn: { warnings.append($0) })
        XCTAssertEqual(out.count, 3)
        XCTAssertEqual(warnings.count, 1, "\(warnings)")
        XCTAssertTrue(warnings[0].hasPrefix("line 2 has") && warnings[0].contains("at most 64"), warnings[0])
    }
}
