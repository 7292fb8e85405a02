import XCTest
import Foundation

/// `thor train --set model.architecture=decoder-only` end to end: training over worker processes,
/// the checkpoint recording the architecture, `thor translate`, `thor eval checkpoint`, and `--resume`
/// reproducing the uninterrupted run's training losses.
final class PrefixLMCommandLineTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-cli-prefixlm-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    /// `split@step` → training loss of the `train` records in `metrics.jsonl`.
    func trainLosses(_ dir: String) throws -> [Int: Double] {
        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        var out: [Int: Double] = [:]
        for l in lines {
            let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as! [String: Any]
            if o["split"] as? String == "train", let s = o["step"] as? Int, let loss = o["loss"] as? Double { out[s] = loss }
        }
        return out
    }

    func testDecoderOnlyTrainTranslateEvaluateResume() throws {
        let dir = scratch + "/run"
        let args = CommandLineTests.tiny + ["--set", "model.architecture=decoder-only"]
        let train = try Thor.run(["train", "--max-steps", "20", "--workers", "2", "--save-dir", dir, "--no-progress"] + args)
        XCTAssertEqual(train.status, 0, train.stderr)
        XCTAssertTrue(train.stderr.contains("decoder-only (prefix-LM), 4 layers"), train.stderr)
        for word in ["BLEU", "experts/token", "task accuracy", "it", "law", "medical", "religion"] {
            XCTAssertTrue(train.stdout.contains(word), "final table lacks \(word):\n\(train.stdout)")
        }
        let ck = dir + "/checkpoint-last"
        XCTAssertTrue(try String(contentsOfFile: ck + "/config.json", encoding: .utf8).contains("\"architecture\": \"decoder-only\""))

        let tr = try Thor.run(["translate", "--checkpoint", ck, "--beam", "2"], input: "first line\nsecond line\n")
        XCTAssertEqual(tr.status, 0, tr.stderr)
        XCTAssertEqual(tr.stdout.split(separator: "\n", omittingEmptySubsequences: false).count, 3, tr.stdout)

        let ev = try Thor.run(["eval", "checkpoint", "--checkpoint", ck, "--json"])
        XCTAssertEqual(ev.status, 0, ev.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(ev.stdout.utf8)) as! [String: Any]
        XCTAssertNotNil(obj["bleu"]); XCTAssertNotNil(obj["task_accuracy"]); XCTAssertNotNil(obj["experts_per_token"])

        // Resume from step 10 in process: steps 15 and 20 log the same losses, to the last bit.
        let before = try trainLosses(dir)
        XCTAssertEqual(before.keys.sorted(), [5, 10, 15, 20])
        let resumed = try Thor.run(["train", "--resume", dir + "/checkpoint-10", "--max-steps", "20", "--workers", "0",
                                    "--save-dir", dir, "--no-progress"] + args)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try trainLosses(dir), before, "resumed decoder-only run differs from the uninterrupted one")
    }

    func testUnknownArchitectureIsRefusedNamingTheAllowedValues() throws {
        let r = try Thor.run(["train", "--set", "model.architecture=decoder", "--save-dir", scratch + "/x"])
        XCTAssertNotEqual(r.status, 0)
        for word in ["model.architecture", "encoder-decoder", "decoder-only"] { XCTAssertTrue(r.stderr.contains(word), r.stderr) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/x"), "a rejected run must write nothing")
    }
}
