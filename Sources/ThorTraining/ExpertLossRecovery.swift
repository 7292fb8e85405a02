import ThorModel
import ThorCluster

/// What a run does when every replica of some experts is lost (`--on-expert-loss`):
///
/// - `fail`: stop with a non-zero status naming the lost experts, the workers that held
///   them and the `--resume` command for the last complete checkpoint;
/// - `wait`: pause until a worker that still holds them (same session, at the committed
///   step, e.g. a hung or partitioned worker) comes back, then redo the rolled-back step;
/// - `restore`: place the lost experts on the live workers, reload the whole run from the
///   last checkpoint (or the run's start, kept in memory until a checkpoint exists) and
///   continue — a deterministic replay, so the end is still bit-identical; only time is lost.
///
/// Nothing ever continues with missing experts: every path either makes them whole or throws.
public final class ExpertLossRecovery {
    public let policy: ExpertLossPolicy
    public let runtime: ExpertRuntime
    /// Seconds `wait` waits before giving up.
    public var waitTimeout: Double = 3600
    /// Seconds `restore` waits for a worker to register when none is left at all (every
    /// worker declared lost at once; a local cluster's workers register again on their own).
    public var joinTimeout: Double = 60
    /// The newest complete checkpoint directory (nil: none yet).
    public var lastCheckpoint: () -> String?
    /// Lines for the user.
    public var say: (String) -> Void
    /// A `restore` event for the run's log.
    public var onEvent: ((ClusterEvent) -> Void)?
    private var start: TrainerSnapshot?

    /// With `restore` and no checkpoint yet, keeps the trainer's current state in memory.
    public init(policy: ExpertLossPolicy, runtime: ExpertRuntime, trainer: Trainer,
                lastCheckpoint: @escaping () -> String?, say: @escaping (String) -> Void) throws {
        self.policy = policy
        self.runtime = runtime
        self.lastCheckpoint = lastCheckpoint
        self.say = say
        if policy == .restore, runtime.remote != nil, lastCheckpoint() == nil { start = try trainer.snapshot() }
    }

    /// Installs itself as `trainer.expertLossHandler`.
    public func install(on trainer: Trainer) {
        trainer.expertLossHandler = { [unowned self] error, duringCommit, trainer in
            try self.handle(error, duringCommit: duringCommit, trainer: trainer)
        }
    }

    func handle(_ error: ClusterError, duringCommit: Bool, trainer: Trainer) throws {
        guard case .expertsLost(let keys, let workers, let step) = error, let remote = runtime.remote else { throw error }
        let names = keys.map(\.description).joined(separator: " ")
        let resume = lastCheckpoint().map { "thor train --resume \($0)" } ?? "no checkpoint was written yet: start the run again"
        switch policy {
        case .fail:
            throw TrainingError.expertsLost("no replica left of experts \(names) at step \(step) (workers lost: \(workers.joined(separator: ", "))); "
                + "--on-expert-loss fail stops here, nothing after step \(trainer.step) was kept. Resume: \(resume)")
        case .wait where !duringCommit:
            say("no replica left of experts \(names) at step \(step): step rolled back, waiting up to \(Int(waitTimeout)) s for a worker holding them to come back")
            let t0 = monotonicSeconds()
            if try remote.waitForMissingExperts(timeout: waitTimeout) {
                onEvent?(ClusterEvent(kind: .rejoined, step: step, worker: workers.joined(separator: ","),
                                      reason: "experts \(names) came back; redoing step \(step)", recoverySeconds: monotonicSeconds() - t0))
                return
            }
            throw TrainingError.expertsLost("no replica of experts \(names) came back within \(Int(waitTimeout)) s (--on-expert-loss wait). Resume: \(resume)")
        case .wait, .restore:
            let t0 = monotonicSeconds()
            try remote.replaceMissingExperts(joinTimeout: joinTimeout)
            let from: String
            if let path = lastCheckpoint() {
                try trainer.restore(from: try RunCheckpoint(directory: path))
                from = path
            } else if let start {
                try trainer.restore(from: start)
                from = "the run's start (step \(start.state.step), kept in memory)"
            } else {
                throw TrainingError.expertsLost("no replica left of experts \(names) at step \(step) and nothing to restore from. Resume: \(resume)")
            }
            remote.resetCommittedStep(trainer.step)
            onEvent?(ClusterEvent(kind: .restored, step: step, worker: workers.joined(separator: ","),
                                  reason: "no replica left of \(names): reloaded \(from), replaying from step \(trainer.step + 1)",
                                  lostExperts: keys, recoverySeconds: monotonicSeconds() - t0))
        }
    }
}
