import XCTest
import Foundation
import ThorTensor
import ThorModel
import ThorCluster
import ThorTraining
#if canImport(Glibc)
import Glibc
#endif

/// The runtime's fault injector over real `thor worker` processes: each fault (hang, delay,
/// drop, corrupt, partition) is survived and the final checkpoint equals the fault-free
/// run's tensor by tensor; a corrupt frame is refused by the worker and never applied.
final class FaultInjectionTests: XCTestCase {
    static let steps = 5
    nonisolated(unsafe) static var scratch: String = ""
    /// The fault-free run's final checkpoint, shared by the tests of this class.
    nonisolated(unsafe) static var reference: String?

    override class func setUp() {
        scratch = NSTemporaryDirectory() + "thor-faults-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override class func tearDown() { try? FileManager.default.removeItem(atPath: scratch) }

    func options() -> TrainingRun.Options {
        var c = tinyConfiguration(workers: 3)
        c.training.maxSteps = Self.steps
        c.cluster.replicas = 2
        var o = TrainingRun.Options(configuration: c)
        o.evaluateAtEnd = false
        o.overwrite = true
        return o
    }

    func referenceCheckpoint() throws -> String {
        if let r = Self.reference { return r }
        var o = options()
        o.saveDirectory = Self.scratch + "/reference"
        let run = TrainingRun(options: o)
        run.info = { _ in }
        run.result = { _ in }
        let path = try XCTUnwrap(try run.run().lastCheckpoint)
        Self.reference = path
        return path
    }

    /// Runs `faults` and checks the end is bitwise equal to the fault-free run; returns the report.
    func survive(_ name: String, _ faults: [FaultSpec]) throws -> ChaosExperiment.Report {
        let e = ChaosExperiment(options: options(), plan: FaultPlan(faults: faults), scenario: name,
                                directory: Self.scratch + "/" + name)
        e.reference = try referenceCheckpoint()
        e.keep = true
        e.info = { _ in }
        let r = try e.run()
        XCTAssertEqual(r.faults.count, faults.count, "\(name): every fault fired: \(r.unfired)")
        XCTAssertTrue(r.unfired.isEmpty, "\(name)")
        XCTAssertGreaterThan(r.tensorsCompared, 50, name)
        XCTAssertTrue(r.bitwiseEqual, "\(name): \(r.differences)")
        for f in r.faults { XCTAssertNil(f.fault.skipped, name) }
        return r
    }

    /// The run's event records in metrics.jsonl.
    func events(_ name: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: Self.scratch + "/\(name)/faults/metrics.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["split"] as? String == "event" }
    }

    func testHangIsDetectedByHeartbeatsAndSurvived() throws {
        let r = try survive("hang", [FaultSpec(kind: .hang, step: 3, phase: .backward, worker: "w2", durationSeconds: 1)])
        let f = try XCTUnwrap(r.faults.first)
        XCTAssertLessThanOrEqual(try XCTUnwrap(f.detectionSeconds), 1.5)
        XCTAssertNotNil(f.recoverySeconds)
        // (Whether it rejoins before this short run ends depends on the machine: FailoverTests cover the rejoin.)
        let ev = try events("hang")
        XCTAssertTrue(ev.contains { $0["event"] as? String == "fault-injected" && $0["fault"] as? String == "hang" && $0["worker"] as? String == "w2" })
        XCTAssertTrue(ev.contains { $0["event"] as? String == "worker-lost" && $0["worker"] as? String == "w2" }, "\(ev)")
    }

    func testDelayedRequestsChangeNothing() throws {
        let r = try survive("delay", [FaultSpec(kind: .delay, step: 2, phase: .forward, worker: "w0", delayMilliseconds: 300),
                                      FaultSpec(kind: .delay, step: 3, phase: .step, worker: "w1", delayMilliseconds: 300)])
        XCTAssertEqual(r.faults.map(\.fault.spec.kind), [.delay, .delay])
        XCTAssertFalse(try events("delay").contains { $0["event"] as? String == "worker-lost" }, "a 300 ms delay loses no worker")
    }

    func testDroppedRequestsAreSentAgainAndAnsweredOnce() throws {
        let r = try survive("drop", [FaultSpec(kind: .drop, step: 2, phase: .forward, worker: "w1"),
                                     FaultSpec(kind: .drop, step: 3, phase: .step, worker: "w0")])
        for f in r.faults {
            XCTAssertLessThanOrEqual(try XCTUnwrap(f.detectionSeconds, "\(f.events)"), 1.5)
            XCTAssertTrue(f.events.contains { $0.hasPrefix("resend \(f.fault.worker)") }, "\(f.events)")
        }
        // The worker stayed in service: no loss, so nothing was redone.
        XCTAssertFalse(try events("drop").contains { $0["event"] as? String == "worker-lost" })
    }

    func testCorruptFrameIsRefusedByTheWorkerAndNeverApplied() throws {
        let r = try survive("corrupt", [FaultSpec(kind: .corrupt, step: 2, phase: .backward, worker: "w0"),
                                        FaultSpec(kind: .corrupt, step: 3, phase: .step, worker: "w2")])
        let ev = try events("corrupt")
        for w in ["w0", "w2"] {
            XCTAssertTrue(ev.contains { $0["event"] as? String == "frame-refused" && $0["worker"] as? String == w }, "\(w) refused: \(ev)")
        }
        // Bitwise equal (checked in `survive`): the damaged Step was not applied twice nor half.
        XCTAssertEqual(r.faults.filter { $0.detectionSeconds != nil }.count, 2)
    }

    /// Faults on the way back: the worker has applied the request when its reply is lost,
    /// damaged or late. The coordinator asks again with the same request id and the worker
    /// answers from its reply cache: a Step applied twice would change Adam's state, and the
    /// run would not be bitwise equal to the fault-free one.
    func testLostDamagedAndLateRepliesAreAskedForAgainAndNeverAppliedTwice() throws {
        let r = try survive("replies", [
            FaultSpec(kind: .drop, step: 2, phase: .step, worker: "w0", direction: .reply),
            FaultSpec(kind: .corrupt, step: 3, phase: .backward, worker: "w1", direction: .reply),
            FaultSpec(kind: .delay, step: 4, phase: .step, worker: "w2", delayMilliseconds: 1_500, direction: .reply)])
        for f in r.faults {
            XCTAssertTrue(f.events.contains { $0.hasPrefix("resend \(f.fault.worker)") }, "\(f.fault): \(f.events)")
            XCTAssertLessThanOrEqual(try XCTUnwrap(f.detectionSeconds, "\(f.fault): \(f.events)"), 1.5)
        }
        let damaged = try XCTUnwrap(r.faults.first { $0.fault.spec.kind == .corrupt })
        XCTAssertTrue(damaged.events.contains { $0.contains("could not be decoded") }, "asked again at once: \(damaged.events)")
        XCTAssertFalse(try events("replies").contains { $0["event"] as? String == "worker-lost" }, "no worker is lost over a reply")
    }

    func testPartitionedWorkerIsDeclaredDeadThenRejoins() throws {
        let r = try survive("partition", [FaultSpec(kind: .partition, step: 2, phase: .forward, worker: "w1", durationSeconds: 1.2)])
        let f = try XCTUnwrap(r.faults.first)
        XCTAssertLessThanOrEqual(try XCTUnwrap(f.detectionSeconds), 1.5)
        XCTAssertTrue(f.events.contains("worker-lost w1"), "\(f.events)")
    }

    /// A fault plan on `TrainingRun` (as `thor train --fault-plan`) with no replica left:
    /// `restore` replays from the start; the replayed steps' records are marked
    /// `"replayed": true` (each step counted once), and the end equals the fault-free run.
    func testRestoreReplayIsMarkedInMetricsAndNotDoubleCounted() throws {
        var o = options()
        o.configuration.cluster.workers = 2
        o.configuration.cluster.replicas = 1
        o.configuration.training.logInterval = 1
        o.configuration.training.maxSteps = 4
        o.saveDirectory = Self.scratch + "/replay-clean"
        let clean = TrainingRun(options: o)
        clean.info = { _ in }; clean.result = { _ in }
        let expected = try XCTUnwrap(try clean.run().lastCheckpoint)
        o.saveDirectory = Self.scratch + "/replay"
        o.faultPlan = FaultPlan(faults: [FaultSpec(kind: .kill, step: 3, phase: .backward, worker: "w0")])
        let run = TrainingRun(options: o)
        var lines: [String] = []
        run.info = { lines.append($0) }; run.result = { _ in }
        let got = try XCTUnwrap(try run.run().lastCheckpoint)
        XCTAssertTrue(lines.contains { $0.contains("fault injected: kill worker w0 at step 3 backward") }, "\(lines)")
        let (compared, differences) = try ChaosExperiment.compareCheckpoints(expected, got)
        XCTAssertGreaterThan(compared, 50)
        XCTAssertEqual(differences, [])
        let records = try String(contentsOfFile: Self.scratch + "/replay/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let events = records.filter { $0["split"] as? String == "event" }.compactMap { $0["event"] as? String }
        XCTAssertEqual(events.first, "fault-injected", "\(events)")
        XCTAssertTrue(events.contains("restore"), "\(events)")
        let train = records.filter { $0["split"] as? String == "train" }
        let replayed = train.filter { $0["replayed"] as? Bool == true }.compactMap { $0["step"] as? Int }
        XCTAssertEqual(replayed, [1, 2], "steps 1 and 2 were logged, then replayed after the restore")
        let counted = train.filter { $0["replayed"] == nil }.compactMap { $0["step"] as? Int }
        XCTAssertEqual(counted, [1, 2, 3, 4], "each step once")
    }

    /// A worker killed while the dev set is translated: the batch goes to the next replica,
    /// the report equals the fault-free one, and training continues bit for bit.
    func testWorkerKilledDuringDevEvaluation() throws {
        let reference = try Setup(tinyConfiguration(workers: 0))
        let s = try Setup(tinyConfiguration(workers: 3))
        defer { s.runtime.shutdown() }
        for _ in 0..<2 { try reference.trainer.trainStep(); try s.trainer.trainStep() }
        let cluster = try XCTUnwrap(s.runtime.cluster)
        var killed = false
        cluster.coordinator.faultHook = { p in
            if p.phase == .forward, p.worker == "w1", !killed { killed = true; kill(cluster.processID(of: "w1"), SIGKILL) }
            return .none
        }
        func dev(_ x: Setup) throws -> EvaluationReport {
            try Evaluator.evaluate(x.model, tokenizer: x.data.tokenizer, corpus: x.data.dev, pairs: x.data.devPairs,
                                   indices: Evaluator.spread(count: x.data.dev.pairs.count, limit: 12),
                                   options: DecodingOptions(x.configuration))
        }
        let expected = try dev(reference), got = try dev(s)
        XCTAssertTrue(killed)
        XCTAssertEqual(got.averageBLEU, expected.averageBLEU)
        XCTAssertEqual(got.loss.bitPattern, expected.loss.bitPattern)
        cluster.coordinator.faultHook = nil
        try reference.trainer.trainStep()
        try s.trainer.trainStep()
        assertBitwiseEqual(try reference.snapshot(), try s.snapshot(), "after a kill during dev evaluation")
    }

    /// `thor translate --workers 2` (the `Translator` it runs) with a worker killed mid-way:
    /// it finishes and its output equals the fault-free output.
    func testWorkerKilledDuringTranslation() throws {
        let s = try Setup(tinyConfiguration(workers: 0))
        for _ in 0..<3 { try s.trainer.trainStep() }
        let path = Self.scratch + "/translate-checkpoint"
        try s.trainer.saveCheckpoint(to: path)
        let sources = s.data.testPairs.prefix(16).map(\.source)
        let tasks = s.data.testPairs.prefix(16).map { Optional($0.task) }
        let plain = try Translator(checkpoint: path, workers: 0)
        let options = DecodingOptions(plain.model.configuration)
        let expected = try plain.translate(Array(sources), tasks: Array(tasks), options: options)
        let t = try Translator(checkpoint: path, workers: 2)
        defer { t.runtime.shutdown() }
        let cluster = try XCTUnwrap(t.runtime.cluster)
        var killed = false, forwardsAfter = 0
        cluster.coordinator.faultHook = { p in
            guard p.phase == .forward else { return .none }
            if killed { forwardsAfter += 1 }
            if p.worker == "w1", !killed {
                killed = true
                kill(cluster.processID(of: "w1"), SIGKILL)
            }
            return .none
        }
        let got = try t.translate(Array(sources), tasks: Array(tasks), options: options)
        XCTAssertTrue(killed)
        XCTAssertGreaterThan(forwardsAfter, 2, "the kill happened mid-way")
        XCTAssertEqual(got, expected)
    }
}
