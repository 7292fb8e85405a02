import XCTest
import Foundation

/// The `thor` executable as a user runs it (built next to the test bundle).
struct Thor {
    struct Result { var status: Int32; var stdout: String; var stderr: String }

    static var binary: String {
        if let env = ProcessInfo.processInfo.environment["THOR_BINARY"] { return env }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("thor").path
    }

    /// Runs `thor args…` with `input` on stdin; waits (with a deadline) and returns its output.
    @discardableResult
    static func run(_ args: [String], input: String = "", timeout: TimeInterval = 300) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out; p.standardError = err; p.standardInput = inp
        try p.run()
        inp.fileHandleForWriting.write(Data(input.utf8))
        try inp.fileHandleForWriting.close()
        // Read both pipes concurrently so a full pipe cannot block the child.
        let group = DispatchGroup()
        nonisolated(unsafe) var o = Data(), e = Data()
        group.enter(); DispatchQueue.global().async { o = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter(); DispatchQueue.global().async { e = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        if group.wait(timeout: .now() + timeout) == .timedOut {
            p.terminate()
            XCTFail("thor \(args.joined(separator: " ")) timed out")
        }
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self))
    }
}

final class CommandLineTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-cli-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    static let tiny = ["--set", "model.model_dim=16", "--set", "model.hidden_dim=32", "--set", "model.heads=2",
                       "--set", "routing.experts=4", "--set", "data.synthetic_pairs=300",
                       "--set", "data.synthetic_eval_pairs_per_task=3", "--set", "data.vocabulary_size=300",
                       "--set", "training.max_tokens_per_batch=256", "--set", "training.dev_interval=10",
                       "--set", "training.checkpoint_interval=10", "--set", "training.log_interval=5",
                       "--set", "evaluation.max_output_length=12", "--set", "evaluation.dev_sentences=4"]

    /// A short `thor train` over real worker processes ends with a checkpoint that
    /// `thor translate` and `thor eval checkpoint` use; metrics are JSONL.
    func testTrainTranslateEvaluate() throws {
        let dir = scratch + "/run"
        let train = try Thor.run(["train", "--max-steps", "20", "--workers", "2", "--save-dir", dir, "--no-progress"] + Self.tiny)
        XCTAssertEqual(train.status, 0, train.stderr)
        XCTAssertTrue(train.stdout.contains("2 expert workers"), train.stdout)
        for word in ["BLEU", "experts/token", "task accuracy", "tokens/s", "it", "law", "medical", "religion"] {
            XCTAssertTrue(train.stdout.contains(word), "final table lacks \(word):\n\(train.stdout)")
        }
        let ck = dir + "/checkpoint-last"
        XCTAssertTrue(FileManager.default.fileExists(atPath: ck + "/coordinator.safetensors"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/checkpoint-10/config.json"))

        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let records = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(records.filter { $0["split"] as? String == "train" }.count, 4)
        XCTAssertEqual(records.filter { $0["split"] as? String == "dev" }.count, 1)
        XCTAssertNotNil(records.last { $0["split"] as? String == "test" }?["bleu"])

        let tr = try Thor.run(["translate", "--checkpoint", ck, "--beam", "2"], input: "first line\nsecond line\n")
        XCTAssertEqual(tr.status, 0, tr.stderr)
        XCTAssertEqual(tr.stdout.split(separator: "\n", omittingEmptySubsequences: false).count, 3, tr.stdout)

        let ev = try Thor.run(["eval", "checkpoint", "--checkpoint", ck, "--json"])
        XCTAssertEqual(ev.status, 0, ev.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(ev.stdout.utf8)) as! [String: Any]
        XCTAssertNotNil(obj["bleu"]); XCTAssertNotNil(obj["task_accuracy"]); XCTAssertNotNil(obj["experts_per_token"])
        // Per MoE layer the task × expert usage: 4 tasks × 4 experts; for each task the mean over layers of its
        // row sums is the task's experts per token.
        let usage = try XCTUnwrap(obj["expert_usage"] as? [String: [[Double]]])
        XCTAssertEqual(Set(usage.keys), ["encoder.layers.1.moe", "decoder.layers.1.moe"])
        for m in usage.values { XCTAssertEqual(m.count, 4); XCTAssertTrue(m.allSatisfy { $0.count == 4 && $0.allSatisfy { $0 >= 0 && $0 <= 1 } }) }
        for (t, task) in ["it", "law", "medical", "religion"].enumerated() {
            let meanRowSum = usage.values.map { $0[t].reduce(0, +) }.reduce(0, +) / Double(usage.count)
            XCTAssertEqual(meanRowSum, try XCTUnwrap(obj["experts_per_token_\(task)"] as? Double), accuracy: 1e-9)
        }
        // --gold-task routes the same weights with r = E_task[gold]: same test set, other routing.
        let gold = try Thor.run(["eval", "checkpoint", "--checkpoint", ck, "--json", "--gold-task"])
        XCTAssertEqual(gold.status, 0, gold.stderr)
        let g = try JSONSerialization.jsonObject(with: Data(gold.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(g["sentences"] as? Int, obj["sentences"] as? Int)
        XCTAssertNotEqual(g["loss"] as? Double, obj["loss"] as? Double, "r = E_task[gold] should change the routing")
        let table = try Thor.run(["eval", "checkpoint", "--checkpoint", ck])
        XCTAssertEqual(table.status, 0, table.stderr)
        XCTAssertTrue(table.stdout.contains("encoder.layers.1.moe: task × expert usage"), table.stdout)
        XCTAssertTrue(table.stdout.contains("decoder.layers.1.moe: task × expert usage"), table.stdout)
        // The same figures (all but the decoding speed) with the experts on 2 workers.
        let ev2 = try Thor.run(["eval", "checkpoint", "--checkpoint", ck, "--json", "--workers", "2"])
        XCTAssertEqual(ev2.status, 0, ev2.stderr)
        var a = obj, b = try JSONSerialization.jsonObject(with: Data(ev2.stdout.utf8)) as! [String: Any]
        a["decode_tokens_per_s"] = nil; b["decode_tokens_per_s"] = nil
        XCTAssertEqual(NSDictionary(dictionary: a), NSDictionary(dictionary: b))
    }

    /// Bad configuration values and flags fail before any work, naming what was wrong.
    func testBadInputGetsClearErrors() throws {
        let r1 = try Thor.run(["train", "--set", "routing.threshold=1.5", "--save-dir", scratch + "/x"])
        XCTAssertNotEqual(r1.status, 0)
        XCTAssertTrue(r1.stderr.contains("routing.threshold"), r1.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/x"), "a rejected run must write nothing")

        let r2 = try Thor.run(["train", "--set", "routing.bogus=1"])
        XCTAssertNotEqual(r2.status, 0)
        XCTAssertTrue(r2.stderr.contains("routing.bogus"), r2.stderr)

        let r3 = try Thor.run(["train", "--variant", "nope"])
        XCTAssertNotEqual(r3.status, 0)
        XCTAssertTrue(r3.stderr.contains("routing.variant"), r3.stderr)

        let r4 = try Thor.run(["translate", "--checkpoint", scratch + "/none"])
        XCTAssertNotEqual(r4.status, 0)
        XCTAssertTrue(r4.stderr.contains("not a checkpoint directory"), r4.stderr)

        let bad = scratch + "/bad.tsv"
        try "it\tgood source\tgood target\nlaw\tonly two fields\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r5 = try Thor.run(["train", "--set", "data.train=\(bad)", "--set", "data.dev=\(bad)", "--set", "data.test=\(bad)",
                               "--save-dir", scratch + "/y"])
        XCTAssertNotEqual(r5.status, 0)
        XCTAssertTrue(r5.stderr.contains("bad.tsv:2"), r5.stderr)
    }

    /// `--print-config` prints a configuration that `--config` reads back.
    func testPrintedConfigurationReadsBack() throws {
        let printed = try Thor.run(["train", "--print-config", "--set", "routing.threshold=0.7"])
        XCTAssertEqual(printed.status, 0, printed.stderr)
        let path = scratch + "/c.json"
        try printed.stdout.write(toFile: path, atomically: true, encoding: .utf8)
        let again = try Thor.run(["train", "--print-config", "--config", path])
        XCTAssertEqual(again.stdout, printed.stdout)
        XCTAssertTrue(printed.stdout.contains("\"threshold\": 0.7"), printed.stdout)
    }

    func testHelpExplainsEverySubcommand() throws {
        let help = try Thor.run(["--help"])
        for sub in ["train", "translate", "eval", "bench", "worker", "cluster", "experiment"] {
            XCTAssertTrue(help.stdout.contains(sub), help.stdout)
        }
        let trainHelp = try Thor.run(["train", "--help"])
        XCTAssertTrue(trainHelp.stdout.contains("--workers"), trainHelp.stdout)
        XCTAssertTrue(trainHelp.stdout.contains("--resume"), trainHelp.stdout)
    }

    /// `thor --version` names the build and the wire protocol version it speaks (what a user compares
    /// across nodes before a multi-node run).
    func testVersionNamesBuildAndProtocol() throws {
        let v = try Thor.run(["--version"])
        XCTAssertEqual(v.status, 0, v.stderr)
        let line = v.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(line.range(of: #"^thor [0-9]+\.[0-9]+\.[0-9]+ \(wire protocol version [0-9]+\)$"#,
                                 options: .regularExpression) != nil, line)
    }
}
