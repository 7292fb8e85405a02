import XCTest
import Foundation

/// `thor chaos` end to end: a built-in scenario against real worker processes, its JSON
/// report, reproducible random faults, and refusals of bad scenario files.
final class ChaosCommandTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-chaos-cli-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    static let tiny = ["--set", "model.model_dim=16", "--set", "model.hidden_dim=32", "--set", "model.heads=2",
                       "--set", "routing.experts=4", "--set", "data.synthetic_pairs=300", "--set", "data.vocabulary_size=300",
                       "--set", "training.max_tokens_per_batch=256", "--set", "cluster.expert_threads=1"]

    func chaosJSON(_ args: [String]) throws -> [String: Any] {
        let r = try Thor.run(["chaos"] + args + ["--json", "--workers", "3", "--steps", "5"] + Self.tiny)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("chaos: run 2 of 2"), "progress on stderr: \(r.stderr)")
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
    }

    func testRandomKillScenarioEndsBitwiseEqualAndIsReproducibleFromTheSeed() throws {
        let a = try chaosJSON(["--scenario", "kill-random", "--seed", "3"])
        XCTAssertEqual(a["bitwise_equal"] as? Bool, true, "\(a)")
        XCTAssertEqual(a["faults_injected"] as? Int, 2, "\(a)")
        for k in ["max_detection_s", "max_recovery_s", "max_rejoin_s"] { XCTAssertNotNil(a[k] as? Double, "\(k): \(a)") }
        XCTAssertLessThan(a["max_detection_s"] as? Double ?? 99, 1.5)
        let faults = try XCTUnwrap(a["faults"] as? [[String: Any]])
        XCTAssertEqual(faults.map { $0["kind"] as? String }, ["kill", "kill"])
        for f in faults { XCTAssertNotNil(f["detection_s"] as? Double, "\(f)") }
        // The same seed draws the same faults.
        let b = try chaosJSON(["--scenario", "kill-random", "--seed", "3"])
        func plan(_ o: [String: Any]) -> [String] {
            ((o["faults"] as? [[String: Any]]) ?? []).map { "\($0["worker"] ?? "") \($0["step"] ?? "") \($0["phase"] ?? "")" }
        }
        XCTAssertEqual(plan(a), plan(b))
        XCTAssertEqual(b["bitwise_equal"] as? Bool, true)
    }

    func testScenarioFileRunsAndTableIsPrinted() throws {
        let file = scratch + "/drop.json"
        try #"{"name": "one-drop", "faults": [{"kind": "drop", "step": 2, "phase": "step", "worker": "w2"}]}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let r = try Thor.run(["chaos", file, "--workers", "3", "--steps", "4"] + Self.tiny)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("scenario one-drop"), r.stdout)
        XCTAssertTrue(r.stdout.contains("drop w2 @2 step"), r.stdout)
        XCTAssertTrue(r.stdout.contains("bitwise equal"), r.stdout)
    }

    func testBadScenariosAreRefusedClearly() throws {
        let file = scratch + "/bad.json"
        try #"{"faults": [{"kind": "kill", "step": 3, "phase": "sideways"}]}"#.write(toFile: file, atomically: true, encoding: .utf8)
        var r = try Thor.run(["chaos", file])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("faults[0].phase"), r.stderr)
        XCTAssertTrue(r.stderr.contains(file), r.stderr)
        r = try Thor.run(["chaos", "--scenario", "meteor"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--scenario must be one of kill-forward"), r.stderr)
        r = try Thor.run(["chaos"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("give a scenario file or --scenario"), r.stderr)
        r = try Thor.run(["train", "--fault-plan", scratch + "/missing.json"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--fault-plan") && r.stderr.contains("cannot read"), r.stderr)
        r = try Thor.run(["chaos", "--help"])
        XCTAssertTrue(r.stdout.contains("bitwise_equal") && r.stdout.contains("kill-random"), r.stdout)
    }
}
