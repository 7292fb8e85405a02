import XCTest
import Foundation
import ThorTensor
import ThorModel
import ThorTraining

/// The rules of a save directory and of a resumed run's configuration, without training.
final class RunDirectoryUnitTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-rundir-unit-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func testAnotherRunsDirectoryIsRefusedUnlessContinuedOrOverwritten() throws {
        let dir = scratch + "/run"
        XCTAssertNoThrow(try RunDirectory.check(dir, resume: nil, overwrite: false))      // new
        try FileManager.default.createDirectory(atPath: dir + "/checkpoint-10", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/checkpoint-last", withDestinationPath: "checkpoint-10")
        try "{}".write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try RunDirectory.check(dir, resume: nil, overwrite: false)) { e in
            XCTAssertTrue("\(e)".contains("already holds another run (config.json, 1 checkpoint (checkpoint-10))"), "\(e)")
        }
        XCTAssertThrowsError(try RunDirectory.check(dir, resume: scratch + "/elsewhere/checkpoint-3", overwrite: false))
        XCTAssertTrue(try RunDirectory.check(dir, resume: dir + "/checkpoint-last", overwrite: false).continuing)
        XCTAssertTrue(try RunDirectory.check(dir + "/", resume: dir + "/./checkpoint-10/", overwrite: false).continuing)
        let replaced = try RunDirectory.check(dir, resume: nil, overwrite: true)
        XCTAssertEqual(replaced.replacing, ["config.json", "checkpoint-10", "checkpoint-last"])
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/checkpoint-10"), "check must change nothing")
        try "x".write(toFile: scratch + "/file", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try RunDirectory.check(scratch + "/file", resume: nil, overwrite: true))
    }

    func testMetricsAfterAResumedStepAreDropped() throws {
        let path = scratch + "/metrics.jsonl"
        do {
            let log = try MetricsLog(path: path)
            for s in [5, 10, 15, 20] { try log.write(["split": "train", "step": s]) }
            try log.write(["split": "dev", "step": 10])
        }
        let log = try MetricsLog(path: path, keepingThrough: 10)
        try log.write(["split": "train", "step": 15])
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines, [#"{"split":"train","step":5}"#, #"{"split":"train","step":10}"#,
                               #"{"split":"dev","step":10}"#, #"{"split":"train","step":15}"#])
    }

    func testResumeRefusesKeysThatChangeTheModel() throws {
        var saved = ThorConfiguration.quickstart
        saved.model.vocabularySize = 1000; saved.routing.tasks = 4
        let same = try ThorConfiguration.resumed(from: saved, with: [:], checkpoint: "ck")
        XCTAssertEqual(same, saved)
        let more = try ThorConfiguration.resumed(from: saved, with: [
            "training.max_steps": "5000", "training.log_interval": "7", "cluster.workers": "3",
            "model.vocabulary_size": "0", "routing.tasks": "0", "model.model_dim": "64"], checkpoint: "ck")
        XCTAssertEqual(more.training.maxSteps, 5000); XCTAssertEqual(more.cluster.workers, 3)
        XCTAssertEqual(more.model, saved.model); XCTAssertEqual(more.routing, saved.routing)
        XCTAssertThrowsError(try ThorConfiguration.resumed(from: saved, with: [
            "model.model_dim": "128", "routing.variant": "top2", "training.seed": "3", "training.max_steps": "9"],
            checkpoint: "ck")) { e in
            let m = "\(e)"
            for key in ["model.model_dim is 64 in the checkpoint, 128 given", "routing.variant is \"thor-topp\" in the checkpoint, \"top2\" given",
                        "training.seed is 1 in the checkpoint, 3 given"] {
                XCTAssertTrue(m.contains(key), "\(key) missing: \(m)")
            }
            XCTAssertFalse(m.contains("training.max_steps is"), m)
        }
    }
}
