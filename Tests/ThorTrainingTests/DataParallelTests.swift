import XCTest
import Foundation
import ThorTensor
import ThorCluster
import ThorTraining
import ThorModel
#if canImport(Glibc)
import Glibc
#endif

/// Data-parallel coordinators, step 3 (docs/data-parallel.md): `TrainingRun` with
/// `coordinators = C` leads C − 1 follower processes (`thor coordinator`) that share its workers;
/// the run's checkpoint equals the in-process `training.micro_batches = C` run's, byte for byte,
/// and nothing it started outlives it.
final class DataParallelTests: XCTestCase, ThorProcessTest {
    var scratch = ""
    var children: [pid_t] = []

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-dp-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for p in children { kill(p, SIGKILL); var s: Int32 = 0; waitpid(p, &s, 0) }
        try? FileManager.default.removeItem(atPath: scratch)
    }

    func options(_ c: Int, workers: Int, steps: Int = 6) -> TrainingRun.Options {
        var conf = tinyConfiguration(workers: workers)
        conf.training.microBatches = c
        conf.training.maxSteps = steps
        conf.training.checkpointInterval = 3   // a checkpoint mid-run: every coordinator's hash compared
        var o = TrainingRun.Options(configuration: conf)
        o.evaluateAtEnd = false
        o.overwrite = true
        return o
    }

    func train(_ o: TrainingRun.Options, _ name: String) throws -> String {
        var o = o
        o.saveDirectory = scratch + "/" + name
        let run = TrainingRun(options: o)
        run.info = { _ in }
        run.result = { _ in }
        let summary = try run.run()
        return try XCTUnwrap(summary.lastCheckpoint)
    }

    /// Direct children of this process (zombies included), from /proc.
    func childProcesses() -> [pid_t] {
        let me = getpid()
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { name -> pid_t? in
            guard let pid = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == me ? pid : nil
        }
    }

    func assertSameCheckpoint(_ a: String, _ b: String, _ what: String) throws {
        let (ta, sa) = try contents(a), (tb, sb) = try contents(b)
        XCTAssertEqual(Set(ta.keys), Set(tb.keys), what)
        XCTAssertGreaterThan(ta.count, 50, what)
        for (name, bits) in ta where tb[name] != bits { XCTFail("\(what): tensor \(name) differs"); break }
        XCTAssertEqual(sa, sb, "\(what): state.json")
    }

    /// C coordinators over W workers (shipped-gradient and active replication) end with the bytes of
    /// C micro-batches in process; and the reference is not C = 1's (the test could fail).
    func testCoordinatorsEqualInProcessMicroBatchesByteForByte() throws {
        let before = Set(childProcesses())
        var references: [Int: String] = [:]
        for c in [2, 3] { references[c] = try train(options(c, workers: 0), "reference-\(c)") }
        for (c, workers, mode) in [(2, 2, ReplicationMode.shippedGradients), (3, 1, .shippedGradients), (3, 2, .active)] {
            var o = options(c, workers: workers)
            o.coordinators = c
            o.liveness.replication = mode
            let ck = try train(o, "dp-\(c)-\(workers)")
            try assertSameCheckpoint(references[c]!, ck, "C = \(c) on \(workers) workers (\(mode.rawValue))")
            XCTAssertTrue(FileManager.default.fileExists(atPath: scratch + "/dp-\(c)-\(workers)/checkpoint-3/coordinator.safetensors"))
            XCTAssertEqual(Set(childProcesses()).subtracting(before), [], "C = \(c): every follower and worker is gone")
        }
        let one = try train(options(1, workers: 0), "reference-1")
        XCTAssertNotEqual(try contents(one).0["embedding.weight"], try contents(references[2]!).0["embedding.weight"])
    }

    /// A run cut at step 3 and resumed with 2 coordinators ends as the uninterrupted run.
    func testResumedTwoCoordinatorRunEqualsUninterrupted() throws {
        let reference = try train(options(2, workers: 0), "reference")
        var o = options(2, workers: 2, steps: 3)
        o.coordinators = 2
        let first = try train(o, "first")
        var r = options(2, workers: 2)
        r.coordinators = 2
        r.resume = first
        r.configuration.training.maxSteps = 6
        r.explicitKeys = ["training.max_steps": "6"]
        let resumed = try train(r, "first")
        try assertSameCheckpoint(reference, resumed, "resumed with 2 coordinators")
    }

    /// The process ids of this process's children whose command line contains `word`.
    func children(running word: String) -> [pid_t] {
        childProcesses().filter { pid in
            let cmd = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
            return cmd.split(separator: "\0").contains { $0 == word }
        }
    }

    /// The pid of the worker process with id `id` (a grandchild via the cluster's spawn is still a child here).
    func worker(_ id: String) -> [pid_t] {
        children(running: "worker").filter { pid in
            ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains(id + "\0")
        }
    }

    /// A follower killed mid-run: the run stops with an error naming it (surviving that is not built
    /// yet, docs/data-parallel.md step 4), and nothing it started is left running.
    func testKilledFollowerStopsTheRunClearlyWithNothingLeft() throws {
        let before = Set(childProcesses())
        var o = options(2, workers: 2, steps: 40)
        o.coordinators = 2
        o.saveDirectory = scratch + "/kill-coordinator"
        let run = TrainingRun(options: o)
        run.info = { _ in }
        run.result = { _ in }
        run.onStep = { [unowned self] p in
            guard p.step == 3 else { return }
            let pids = self.children(running: "coordinator")
            XCTAssertEqual(pids.count, 1)
            for pid in pids { kill(pid, SIGKILL) }
        }
        XCTAssertThrowsError(try run.run()) { error in
            XCTAssertTrue("\(error)".contains("follower coordinator 1"), "\(error)")
        }
        XCTAssertEqual(Set(childProcesses()).subtracting(before), [], "every follower and worker is gone")
    }

    /// A worker killed while the coordinators run a step (the followers start step 4 as soon as step 3
    /// is applied; the leader kills w1 right after step 3): the leader fails over, every coordinator
    /// redoes the step on the new placement, and the run ends with the bytes of the in-process
    /// `micro_batches = C` run (docs/data-parallel.md, step 4). Shipped gradients (the lost primary's
    /// step is rolled back and redone) and active replication; no process is left.
    func testKilledWorkerIsSurvivedAndTheCheckpointEqualsInProcess() throws {
        let before = Set(childProcesses())
        var references: [Int: String] = [:]
        for c in [2, 3] { references[c] = try train(options(c, workers: 0), "reference-\(c)") }
        for (c, workers, mode) in [(2, 2, ReplicationMode.shippedGradients), (3, 3, .active), (2, 3, .shippedGradients)] {
            var o = options(c, workers: workers)
            o.coordinators = c
            o.liveness.replication = mode
            let name = "kill-worker-\(c)-\(workers)-\(mode.rawValue)"
            o.saveDirectory = scratch + "/" + name
            let run = TrainingRun(options: o)
            var events: [ClusterEvent] = []
            run.info = { _ in }
            run.onEvent = { events.append($0) }
            run.result = { _ in }
            var killed: [pid_t] = []
            run.onStep = { [unowned self] p in
                guard p.step == 3 else { return }
                killed = self.worker("w1")
                XCTAssertEqual(killed.count, 1, name)
                for pid in killed { kill(pid, SIGKILL) }
            }
            let summary = try run.run()
            XCTAssertEqual(killed.count, 1, name)
            try assertSameCheckpoint(references[c]!, try XCTUnwrap(summary.lastCheckpoint), name)
            XCTAssertTrue(events.contains { $0.kind == .workerLost && $0.worker == "w1" }, "\(name): the loss was survived, not avoided: \(events)")
            XCTAssertEqual(Set(childProcesses()).subtracting(before), [], "\(name): every follower and worker is gone")
        }
    }

    /// A follower (`thor coordinator`, started by hand) with another configuration or other weights is
    /// refused at its hello, naming what differs; the same configuration is admitted.
    func testFollowerWithAnotherConfigurationIsRefusedAtHello() throws {
        var c = tinyConfiguration(workers: 0)
        c.training.microBatches = 2
        let s = try Setup(c)
        let placement = try Placement(keys: TranslationModel.expertKeys(for: s.configuration), workers: ["w0"], strategy: .roundRobin)
        var other = s.configuration
        other.training.seed += 1
        for (name, conf, expected) in [("other-seed", other, "another configuration"), ("same", s.configuration, "")] {
            let leader = try DataParallelLeader(count: 2, transport: .tcp)
            leader.timeout = 60
            defer { leader.shutdown(reason: "test over") }
            let file = scratch + "/\(name).json"
            try conf.jsonString.write(toFile: file, atomically: true, encoding: .utf8)
            let pid = try thor(["coordinator", "--rank", "1", "--coordinators", "2", "--leader", leader.group.endpoint,
                                "--bind", leader.followerEndpoints[0], "--config", file, "--parent-pid", String(getpid()),
                                "--timeout", "2"], log: scratch + "/\(name).log")
            if expected.isEmpty {
                // Admitted: it then waits for worker w0, which never comes, and says so within its --timeout.
                XCTAssertThrowsError(try leader.connect(placement: placement, replication: .shippedGradients,
                                                        parameters: s.model.parameters, step: 0, configuration: s.configuration)) {
                    XCTAssertTrue("\($0)".contains("follower coordinator 1 failed") && "\($0)".contains("w0"), "\($0)")
                }
            } else {
                XCTAssertThrowsError(try leader.connect(placement: placement, replication: .shippedGradients,
                                                        parameters: s.model.parameters, step: 0, configuration: s.configuration)) {
                    XCTAssertTrue("\($0)".contains(expected), "\($0)")
                }
            }
            leader.shutdown(reason: "test over")
            XCTAssertNotNil(wait(pid, seconds: 10), "\(name): the follower exits when told to stop")
        }
    }

    /// Bad coordinator counts and combinations are refused before anything starts, naming what is wrong.
    func testBadCoordinatorSettingsAreRefusedClearly() throws {
        let before = Set(childProcesses())
        var o = options(2, workers: 2)
        o.coordinators = 0
        XCTAssertThrowsError(try train(o, "zero")) { XCTAssertTrue("\($0)".contains("at least 1"), "\($0)") }
        o = options(3, workers: 2)
        o.coordinators = 2
        XCTAssertThrowsError(try train(o, "mismatch")) {
            XCTAssertTrue("\($0)".contains("training.micro_batches is 3") && "\($0)".contains("must be 2"), "\($0)")
        }
        o = options(2, workers: 0)
        o.coordinators = 2
        XCTAssertThrowsError(try train(o, "no-workers")) { XCTAssertTrue("\($0)".contains("cluster.workers"), "\($0)") }
        // A killed worker is survived with several coordinators, but a fault plan is still refused (step 4).
        o = options(2, workers: 2)
        o.coordinators = 2
        o.faultPlan = FaultPlan(faults: [FaultSpec(kind: .kill, step: 2, phase: .forward, worker: "w1")])
        XCTAssertThrowsError(try train(o, "fault-plan")) { XCTAssertTrue("\($0)".contains("fault injection"), "\($0)") }
        XCTAssertEqual(Set(childProcesses()).subtracting(before), [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/mismatch/checkpoint-last"))
    }
}
