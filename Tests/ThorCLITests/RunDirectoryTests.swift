import XCTest
import Foundation

/// Issue 9 item 3: one run per save directory, resume that cannot silently change the model,
/// metrics without repeated steps; item 5: empty evaluation sets, info on stderr.
final class RunDirectoryTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-rundir-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func train(_ dir: String, _ extra: [String]) throws -> Thor.Result {
        try Thor.run(["train", "--workers", "0", "--save-dir", dir, "--no-progress", "--no-eval"] + CommandLineTests.tiny + extra)
    }

    func trainSteps(_ dir: String) throws -> [Int] {
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").compactMap {
            let o = try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            return o["split"] as? String == "train" ? o["step"] as? Int : nil
        }
    }

    func testASaveDirectoryHoldsOneRun() throws {
        let dir = scratch + "/run"
        let first = try train(dir, ["--max-steps", "20"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let metrics = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)

        // Another run into the same directory is refused, naming what is there, and changes nothing.
        let again = try train(dir, ["--max-steps", "10", "--set", "routing.threshold=0.4"])
        XCTAssertNotEqual(again.status, 0)
        for word in ["already holds another run", "config.json", "metrics.jsonl", "checkpoint-10", "--resume", "--overwrite"] {
            XCTAssertTrue(again.stderr.contains(word), "\(word) missing: \(again.stderr)")
        }
        XCTAssertEqual(try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8), metrics)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/checkpoint-20"))

        // --overwrite replaces the old run entirely: none of its checkpoints or metrics stay.
        let replaced = try train(dir, ["--max-steps", "10", "--overwrite", "--set", "routing.threshold=0.4"])
        XCTAssertEqual(replaced.status, 0, replaced.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/checkpoint-20"), "the old run's checkpoint stayed")
        XCTAssertEqual(try trainSteps(dir), [5, 10])
        XCTAssertTrue(try String(contentsOfFile: dir + "/config.json", encoding: .utf8).contains("\"threshold\": 0.4"))
    }

    func testResumeContinuesTheRunWithoutRepeatingSteps() throws {
        let dir = scratch + "/run"
        let first = try train(dir, ["--max-steps", "20"])
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(try trainSteps(dir), [5, 10, 15, 20])

        // Settings that would change the model are refused, each named, before anything is written.
        let contradicting = try train(dir, ["--resume", dir + "/checkpoint-10", "--max-steps", "30",
                                            "--set", "model.model_dim=32", "--set", "routing.experts=8"])
        XCTAssertNotEqual(contradicting.status, 0)
        for word in ["model.model_dim is 16 in the checkpoint, 32 given", "routing.experts is 4 in the checkpoint, 8 given"] {
            XCTAssertTrue(contradicting.stderr.contains(word), "\(word) missing: \(contradicting.stderr)")
        }
        XCTAssertEqual(try trainSteps(dir), [5, 10, 15, 20])

        // Resuming at step 10 (same model flags, more steps, another log interval) continues the log after step 10.
        let resumed = try train(dir, ["--resume", dir + "/checkpoint-10", "--max-steps", "30"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try trainSteps(dir), [5, 10, 15, 20, 25, 30])
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        let steps = try text.split(separator: "\n").map {
            let o = try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            return "\(o["split"]!)@\(o["step"]!)"
        }
        XCTAssertEqual(steps.count, Set(steps).count, "a step repeats: \(steps)")
    }

    func testEmptyDevSetIsRefused() throws {
        let train = scratch + "/train.tsv", empty = scratch + "/empty.tsv"
        try "it\tgood source\tgood target\nlaw\tanother source\tanother target\n".write(toFile: train, atomically: true, encoding: .utf8)
        try "".write(toFile: empty, atomically: true, encoding: .utf8)
        let r = try Thor.run(["train", "--workers", "0", "--set", "data.train=\(train)", "--set", "data.dev=\(empty)",
                              "--set", "data.test=\(train)", "--save-dir", scratch + "/y"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("dev set") && r.stderr.contains("empty.tsv") && r.stderr.contains("no pairs"), r.stderr)
        XCTAssertFalse(r.stdout.contains("BLEU"), r.stdout)
    }

    func testInfoGoesToStderrAndResultsToStdout() throws {
        let r = try Thor.run(["train", "--workers", "0", "--max-steps", "12", "--save-dir", scratch + "/run", "--no-progress"]
                             + CommandLineTests.tiny)
        XCTAssertEqual(r.status, 0, r.stderr)
        for info in ["data: ", "model: ", "experts run in this process", "dev @ 10", "checkpoint: "] {
            XCTAssertTrue(r.stderr.contains(info), "\(info) not on stderr: \(r.stderr)")
            XCTAssertFalse(r.stdout.contains(info), "\(info) on stdout: \(r.stdout)")
        }
        XCTAssertTrue(r.stdout.contains("BLEU") && r.stdout.contains("tokens/s"), r.stdout)
    }
}
