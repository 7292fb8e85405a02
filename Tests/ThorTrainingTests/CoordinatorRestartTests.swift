import XCTest
import Foundation
import ThorTensor
import ThorCluster
import ThorCheckpoint
import ThorTraining
#if canImport(Glibc)
import Glibc
#endif

/// `kill -9` of the coordinator (`thor train`): no orphans, and `--resume` with the same
/// still-running workers (they re-register with the new session) ends bit-identical.
final class CoordinatorRestartTests: XCTestCase, ThorProcessTest {
    var scratch = ""
    var children: [pid_t] = []

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-restart-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDown() {
        for p in children { kill(p, SIGKILL); var s: Int32 = 0; waitpid(p, &s, 0) }
        try? FileManager.default.removeItem(atPath: scratch)
    }

    func freePort() throws -> Int {
        let c = try ClusterCoordinator(bind: "tcp://127.0.0.1:*")
        return Int(c.endpoint.split(separator: ":").last!)!
    }

    func testCoordinatorKilledAndResumedWithTheSameWorkersEndsBitIdentical() throws {
        var c = tinyConfiguration(workers: 2)
        c.training.maxSteps = 40
        c.training.checkpointInterval = 4
        c.training.logInterval = 4
        c.training.devInterval = 0
        let config = scratch + "/config.json"
        try c.jsonString.write(toFile: config, atomically: true, encoding: .utf8)
        let common = ["train", "--config", config, "--no-eval", "--no-progress"]

        // The run without the fault (experts in process: the same bits as on workers).
        let reference = try thor(common + ["--workers", "0", "--save-dir", scratch + "/a"], log: scratch + "/a.log")
        XCTAssertEqual(wait(reference, seconds: 120), 0, log("a.log"))

        let endpoint = "tcp://127.0.0.1:\(try freePort())"
        let workers = try ["e0", "e1"].map {
            try thor(["worker", "--connect", endpoint, "--id", $0, "--orphan-timeout", "20"], log: scratch + "/\($0).log")
        }
        let b = scratch + "/b"
        let first = try thor(common + ["--bind", endpoint, "--workers", "2", "--save-dir", b], log: scratch + "/b1.log")
        // Kill it once a checkpoint past step 4 exists, mid-run.
        let end = monotonicSeconds() + 120
        while !FileManager.default.fileExists(atPath: b + "/checkpoint-8") && monotonicSeconds() < end { usleep(2_000) }
        kill(first, SIGKILL)
        XCTAssertNotNil(wait(first, seconds: 10))
        let last = try FileManager.default.destinationOfSymbolicLink(atPath: b + "/checkpoint-last")
        XCTAssertLessThan(Int(last.split(separator: "-").last!)!, 40, "the kill came before the end")
        for w in workers { XCTAssertNil(wait(w, seconds: 0.3), "a worker keeps its state and waits for a coordinator") }

        let second = try thor(common + ["--bind", endpoint, "--workers", "2", "--save-dir", b, "--resume", b + "/checkpoint-last"],
                              log: scratch + "/b2.log")
        XCTAssertEqual(wait(second, seconds: 120), 0, log("b2.log"))
        XCTAssertTrue(log("b2.log").contains("registered: e0, e1"), log("b2.log"))
        let (expected, expectedState) = try contents(scratch + "/a/checkpoint-40")
        let (got, gotState) = try contents(b + "/checkpoint-40")
        XCTAssertEqual(gotState, expectedState)
        XCTAssertEqual(Set(got.keys), Set(expected.keys))
        for (name, bytes) in expected { XCTAssertTrue(got[name] == bytes, "\(name) differs after the coordinator restart") }
        // The resumed coordinator shuts its workers down at the end: nothing is left.
        for w in workers { XCTAssertEqual(wait(w, seconds: 10), 0, "worker exits after Shutdown") }
    }

    func testKilledCoordinatorLeavesNoLocalWorkers() throws {
        var c = tinyConfiguration(workers: 2)
        c.training.maxSteps = 100_000
        let config = scratch + "/config.json"
        try c.jsonString.write(toFile: config, atomically: true, encoding: .utf8)
        let coordinator = try thor(["train", "--config", config, "--no-eval", "--no-progress", "--save-dir", scratch + "/c"],
                                   log: scratch + "/c.log")
        // Its workers: processes whose parent is the coordinator, once training has started.
        var workers: [pid_t] = []
        let end = monotonicSeconds() + 60
        while workers.count < 2 && monotonicSeconds() < end {
            usleep(50_000)
            workers = processes(withParent: coordinator)
        }
        XCTAssertEqual(workers.count, 2, log("c.log"))
        kill(coordinator, SIGKILL)
        XCTAssertNotNil(wait(coordinator, seconds: 10))
        let gone = monotonicSeconds() + 3
        while workers.contains(where: isRunning) && monotonicSeconds() < gone { usleep(20_000) }
        for w in workers { XCTAssertFalse(isRunning(w), "worker \(w) outlived its killed coordinator") }
        // A killed process cannot remove its ipc socket directory: the test does.
        let text = log("c.log")
        if let r = text.range(of: "ipc://"), let end = text[r.upperBound...].range(of: "/coordinator.sock") {
            let dir = String(text[r.upperBound..<end.lowerBound])
            if dir.hasPrefix("/tmp/thor-cluster-") { try? FileManager.default.removeItem(atPath: dir) }
        }
    }
}

/// Process ids whose parent is `parent` (from /proc).
func processes(withParent parent: pid_t) -> [pid_t] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return names.compactMap { name -> pid_t? in
        guard let pid = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && pid_t(fields[1]) == parent ? pid : nil
    }
}

/// Whether `pid` exists and is not a zombie.
func isRunning(_ pid: pid_t) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return fields.first.map { $0 != "Z" && $0 != "X" } ?? false
}
