import XCTest
import Dispatch
import ThorTensor
import ThorModel
import ThorCluster
import ThorTraining
#if canImport(Glibc)
import Glibc
#endif

/// When no replica of an expert is left: `fail`, `wait` and `restore` behave as stated,
/// and the runs that continue end bit-identical to the run without the fault.
final class ExpertLossTests: XCTestCase {
    /// Two workers, one replica each: killing or stopping one loses experts.
    func unreplicated() -> ThorConfiguration {
        var c = tinyConfiguration(workers: 2)
        c.cluster.replicas = 1
        return c
    }

    func reference(steps: Int) throws -> [String: Tensor] {
        let s = try Setup(tinyConfiguration())
        for _ in 0..<steps { try s.trainer.trainStep() }
        return try s.snapshot()
    }

    func testFailStopsNamingTheLostExpertsAndTheResumeCommand() throws {
        let s = try Setup(unreplicated())
        defer { s.runtime.shutdown() }
        s.runtime.cluster!.supervise = false
        let recovery = try ExpertLossRecovery(policy: .fail, runtime: s.runtime, trainer: s.trainer,
                                              lastCheckpoint: { "runs/x/checkpoint-400" }, say: { _ in })
        recovery.install(on: s.trainer)
        try s.trainer.trainStep()
        let lostKeys = s.runtime.remote!.placement.keys(on: "w1")
        kill(s.runtime.cluster!.processID(of: "w1"), SIGKILL)
        XCTAssertThrowsError(try s.trainer.trainStep()) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("no replica left of experts \(lostKeys.map(\.description).joined(separator: " "))"), m)
            XCTAssertTrue(m.contains("w1"), m)
            XCTAssertTrue(m.contains("thor train --resume runs/x/checkpoint-400"), m)
        }
        XCTAssertEqual(s.trainer.step, 1, "nothing of the failed step was committed")
    }

    func testRestoreReloadsAndReplaysToTheSameBits() throws {
        let expected = try reference(steps: 4)
        let s = try Setup(unreplicated())
        defer { s.runtime.shutdown() }
        let recovery = try ExpertLossRecovery(policy: .restore, runtime: s.runtime, trainer: s.trainer,
                                              lastCheckpoint: { nil }, say: { _ in })
        recovery.install(on: s.trainer)
        var events: [ClusterEvent] = []
        recovery.onEvent = { events.append($0) }
        let cluster = s.runtime.cluster!
        var killed = false
        cluster.coordinator.faultHook = { p in
            if p.step == 3, p.phase == .backward, p.worker == "w0", !killed {
                killed = true
                kill(cluster.processID(of: "w0"), SIGKILL)
            }
            return .none
        }
        while s.trainer.step < 4 { try s.trainer.trainStep() }
        XCTAssertTrue(killed)
        XCTAssertTrue(events.contains { $0.kind == .restored }, "\(events)")
        assertBitwiseEqual(expected, try s.snapshot(), "restored and replayed")
    }

    func testWaitRedoesTheStepWhenTheStoppedWorkerComesBack() throws {
        let expected = try reference(steps: 4)
        let s = try Setup(unreplicated())
        defer { s.runtime.shutdown() }
        let recovery = try ExpertLossRecovery(policy: .wait, runtime: s.runtime, trainer: s.trainer,
                                              lastCheckpoint: { nil }, say: { _ in })
        recovery.waitTimeout = 20
        recovery.install(on: s.trainer)
        let cluster = s.runtime.cluster!
        let pid = cluster.processID(of: "w1")
        defer { kill(pid, SIGCONT) }
        var stopped = false
        cluster.coordinator.faultHook = { p in
            if p.step == 2, p.phase == .forward, p.worker == "w1", !stopped {
                stopped = true
                kill(pid, SIGSTOP)
                DispatchQueue.global().asyncAfter(deadline: .now() + 1.5) { kill(pid, SIGCONT) }
            }
            return .none
        }
        while s.trainer.step < 4 { try s.trainer.trainStep() }
        XCTAssertTrue(stopped)
        XCTAssertEqual(cluster.processID(of: "w1"), pid, "the same process came back")
        assertBitwiseEqual(expected, try s.snapshot(), "waited and redone")
    }

    /// Trains 4 steps on 2 replicated workers under `restore` (waiting up to 30 s for a worker to
    /// register when none is left); `fault` runs once, at `step`'s `phase`, with the workers'
    /// process ids. Checks a restore happened and the end is bit-identical to an uninterrupted
    /// run; returns the workers' process ids at the end.
    func restoreAfterLosingEveryWorker(step: Int, phase: FaultPhase, what: String,
                                       fault: @escaping ([pid_t]) -> Void) throws -> (before: [pid_t], after: [pid_t]) {
        let expected = try reference(steps: 4)
        let s = try Setup(tinyConfiguration(workers: 2))
        defer { s.runtime.shutdown() }
        let recovery = try ExpertLossRecovery(policy: .restore, runtime: s.runtime, trainer: s.trainer,
                                              lastCheckpoint: { nil }, say: { _ in })
        recovery.joinTimeout = 30
        recovery.install(on: s.trainer)
        var events: [ClusterEvent] = []
        recovery.onEvent = { events.append($0) }
        let cluster = s.runtime.cluster!
        let pids = ["w0", "w1"].map { cluster.processID(of: $0) }
        defer { for pid in pids { kill(pid, SIGCONT) } }
        var struck = false
        cluster.coordinator.faultHook = { p in
            if p.step == step, p.phase == phase, !struck {
                struck = true
                fault(pids)
            }
            return .none
        }
        while s.trainer.step < 4 { try s.trainer.trainStep() }
        XCTAssertTrue(struck)
        XCTAssertTrue(events.contains { $0.kind == .restored }, "\(events)")
        assertBitwiseEqual(expected, try s.snapshot(), what)
        return (pids, ["w0", "w1"].map { cluster.processID(of: $0) })
    }

    /// Every worker misses its heartbeats at once (both stopped, as an overloaded machine can
    /// starve them): `restore` waits for them to register again instead of ending the run, and
    /// the replay still ends bit-identical.
    func testRestoreWaitsForAWorkerWhenEveryWorkerIsLostAtOnce() throws {
        _ = try restoreAfterLosingEveryWorker(step: 2, phase: .forward, what: "every worker lost, waited for, restored and replayed") { pids in
            for pid in pids { kill(pid, SIGSTOP) }
            DispatchQueue.global().asyncAfter(deadline: .now() + 2) { for pid in pids { kill(pid, SIGCONT) } }
        }
    }

    /// Every worker process crashes at once: the local cluster restarts them while `restore`
    /// waits, the new incarnations receive the experts from the in-memory start, and the replay
    /// ends bit-identical.
    func testRestoreWaitsForRestartedWorkersWhenEveryWorkerCrashes() throws {
        let pids = try restoreAfterLosingEveryWorker(step: 3, phase: .backward, what: "every worker crashed, restarted, restored and replayed") { pids in
            for pid in pids { kill(pid, SIGKILL) }
        }
        XCTAssertFalse(pids.after.contains { pids.before.contains($0) }, "new processes serve")
    }
}
