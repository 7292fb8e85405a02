import XCTest
import Foundation

/// Issue 9 as a user meets it on the command line: refusals before anything starts,
/// SIGHUP, a killed coordinator, a worker pointed at nothing.
final class HardeningCLITests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-harden-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch + "/tmp", withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    /// Starts `thor args…` in the background, output into files, TMPDIR in our scratch directory.
    func start(_ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Thor.binary)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["TMPDIR"] = scratch + "/tmp"
        p.environment = env
        FileManager.default.createFile(atPath: scratch + "/out", contents: nil)
        FileManager.default.createFile(atPath: scratch + "/err", contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: scratch + "/out")
        p.standardError = FileHandle(forWritingAtPath: scratch + "/err")
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return p
    }

    func waitFor(_ what: String, seconds: Double = 120, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else {
                let err = (try? String(contentsOfFile: scratch + "/err", encoding: .utf8)) ?? ""
                XCTFail("gave up waiting for \(what): \(err)")
                throw CocoaError(.userCancelled)
            }
            usleep(50_000)
        }
    }

    func socketDirectories() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: scratch + "/tmp")) ?? []).filter { $0.hasPrefix("thor-cluster-") }
    }

    /// A model that cannot fit and absurd worker counts are refused at once, with the
    /// estimate and what is available, before anything is written or started.
    func testTrainRefusesWhatCannotFitBeforeStarting() throws {
        let t0 = Date()
        let big = try Thor.run(["train", "--set", "model.model_dim=16384", "--save-dir", scratch + "/big"])
        XCTAssertNotEqual(big.status, 0)
        XCTAssertTrue(big.stderr.contains("needs an estimated coordinator") && big.stderr.contains("of memory is available"), big.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/big"))
        let many = try Thor.run(["train", "--workers", "1000", "--save-dir", scratch + "/many"])
        XCTAssertNotEqual(many.status, 0)
        XCTAssertTrue(many.stderr.contains("cluster.workers is 1000") && many.stderr.contains("at most 16 workers"), many.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "refusals must come before any work")
        let dir = try Thor.run(["train", "--set", "data.train=\(scratch!)", "--set", "data.dev=\(scratch!)",
                                "--set", "data.test=\(scratch!)", "--save-dir", scratch + "/d"])
        XCTAssertNotEqual(dir.status, 0)
        XCTAssertTrue(dir.stderr.contains("is a directory, not a corpus file") && !dir.stderr.contains("NSCocoaErrorDomain"), dir.stderr)
    }

    /// SIGHUP saves a checkpoint and stops like SIGTERM; the socket directory goes too.
    func testSIGHUPSavesAndStops() throws {
        let run = scratch + "/run"
        let p = try start(["train", "--max-steps", "100000", "--workers", "1", "--save-dir", run, "--no-progress"] + CommandLineTests.tiny)
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try waitFor("the first metrics") {
            ((try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? "").contains("\"train\"")
        }
        kill(p.processIdentifier, SIGHUP)
        p.waitUntilExit()
        let err = (try? String(contentsOfFile: scratch + "/err", encoding: .utf8)) ?? ""
        XCTAssertEqual(p.terminationReason, .exit, "killed by the signal instead of stopping cleanly")
        XCTAssertEqual(p.terminationStatus, 130, err)  // as for SIGINT and SIGTERM: interrupted, checkpoint saved
        XCTAssertTrue(err.contains("signal \(SIGHUP): saving a checkpoint"), err)  // info goes to stderr
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/checkpoint-last/manifest.json"))
        XCTAssertEqual(socketDirectories(), [], "socket directory left behind")
    }

    /// A coordinator killed outright (SIGKILL) leaves no ipc socket directory: its workers
    /// see their parent gone and remove it.
    func testKilledCoordinatorLeavesNoSocketDirectory() throws {
        let run = scratch + "/run"
        let p = try start(["train", "--max-steps", "100000", "--workers", "2", "--save-dir", run, "--no-progress"] + CommandLineTests.tiny)
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try waitFor("the first metrics") {
            ((try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? "").contains("\"train\"")
        }
        XCTAssertEqual(socketDirectories().count, 1)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let deadline = Date().addingTimeInterval(10)
        while !socketDirectories().isEmpty && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(socketDirectories(), [], "socket directory left behind after the coordinator was killed")
    }

    /// A worker pointed at nothing says it never connected; an impossible endpoint is refused at once.
    func testWorkerThatNeverConnectedSaysSoAndEndpointsAreChecked() throws {
        let nothing = try Thor.run(["worker", "--connect", "tcp://127.0.0.1:9", "--orphan-timeout", "1"], timeout: 30)
        XCTAssertEqual(nothing.status, 3)
        XCTAssertTrue(nothing.stderr.contains("never connected to a coordinator at tcp://127.0.0.1:9 within 1.0 s"), nothing.stderr)
        XCTAssertFalse(nothing.stderr.contains("disconnected"), nothing.stderr)
        let bad = try Thor.run(["worker", "--connect", "tcp://256.1.1.1:99999"], timeout: 30)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("tcp://256.1.1.1:99999") && bad.stderr.contains("1…65535"), bad.stderr)
    }
}
