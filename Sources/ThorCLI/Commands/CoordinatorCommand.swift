import ArgumentParser
import Foundation
import ThorCluster
import ThorTraining

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run a follower coordinator of a data-parallel run (rank ≥ 1).",
        discussion: """
        With `thor train --coordinators C` the leader (rank 0) starts C − 1 of these itself; \
        this command is the building block for running them elsewhere. A follower builds the \
        same model from the same configuration and seed as the leader, binds --bind for the \
        workers (each worker connects to it with `thor worker --coordinator ENDPOINT`), \
        connects to the leader's group endpoint (--leader), receives the placement, and then \
        for every step runs forward and backward of shard --rank of the batch against the \
        shared workers, sends its dense gradient to the leader and applies the summed \
        gradient the leader sends back. It exits when the leader says stop, when \
        --parent-pid is gone, or on an error (which it reports to the leader first). \
        See docs/data-parallel.md.
        """)

    @Option(help: "This coordinator's rank, 1 … C − 1 (rank 0 is the leader).")
    var rank: Int

    @Option(help: "The number of coordinators C (training.micro_batches must equal it).")
    var coordinators: Int

    @Option(help: ArgumentHelp("The leader's group endpoint (tcp://HOST:PORT or ipc://PATH).", valueName: "endpoint"))
    var leader: String

    @Option(help: ArgumentHelp("The endpoint this coordinator binds for the workers.", valueName: "endpoint"))
    var bind: String

    @Option(help: "The run's configuration file (the leader's, resolved).")
    var config: String

    @Option(help: "Continue from this checkpoint directory (its dense weights, data position, dropout state).")
    var resume: String?

    @Option(help: "Exit when this process is no longer the parent (set by the leader).")
    var parentPid: Int32?

    @Option(help: "Seconds between heartbeats between this coordinator and the workers.")
    var heartbeatInterval: Double = 0.25

    @Option(help: "Missed heartbeats after which a worker is declared dead.")
    var heartbeatLiveness: Int = 5

    @Option(help: "Seconds to wait for the leader or the workers before giving up.")
    var timeout: Double = 600

    func validate() throws {
        guard coordinators >= 2 else { throw ValidationError("--coordinators must be at least 2 for a follower, got \(coordinators)") }
        guard rank >= 1, rank < coordinators else {
            throw ValidationError("--rank must be in 1…\(coordinators - 1) (rank 0 is the leader, `thor train --coordinators`), got \(rank)")
        }
        do { try Endpoint.validate(leader) } catch { throw ValidationError("--leader: \(error)") }
        do { try Endpoint.validate(bind, binding: true) } catch { throw ValidationError("--bind: \(error)") }
        guard heartbeatInterval > 0, heartbeatInterval.isFinite else {
            throw ValidationError("--heartbeat-interval must be a positive number of seconds, got \(heartbeatInterval)")
        }
        guard heartbeatLiveness >= 1 else { throw ValidationError("--heartbeat-liveness must be at least 1, got \(heartbeatLiveness)") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive, got \(timeout)") }
    }

    func run() throws {
        let c = try ThorConfiguration(contentsOf: config)
        var options = DataParallelFollower.Options(rank: rank, count: coordinators, leader: leader, bind: bind, configuration: c)
        options.resume = resume
        options.parentPID = parentPid
        options.heartbeatInterval = heartbeatInterval
        options.heartbeatLiveness = heartbeatLiveness
        options.timeout = timeout
        let follower = try DataParallelFollower(options: options)
        do {
            _ = try follower.run()
        } catch {
            FileHandle.standardError.write(Data("thor coordinator \(rank): \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
