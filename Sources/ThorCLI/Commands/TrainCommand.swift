import ArgumentParser
import Foundation
import ThorModel
import ThorCluster
import ThorTraining

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a THOR-MoE model over a local cluster of expert workers.",
        discussion: """
        Without --config, trains the built-in quick-start model (a small THOR top-p \
        encoder-decoder) on the built-in synthetic multi-domain corpus; `--print-config` \
        shows it as a config file to start from. The coordinator (this process) runs \
        embeddings, attention and both routing levels; `--workers N` expert-worker processes \
        host the routed experts (0: in this process). Progress goes to stderr; metrics \
        (JSONL), the configuration and checkpoints (safetensors) to --save-dir. At the end \
        the test set is translated and scored: BLEU per task, experts per token, task \
        accuracy, tokens/s. Ctrl-C saves a checkpoint and stops the workers; --resume continues \
        bit for bit, on any number of workers.

        Precedence: the config file, then each --set, then the explicit flags.
        """)

    @Option(name: .long, help: "Configuration file (JSON; see docs/configuration.md).")
    var config: String?

    @Option(name: .customLong("set"), parsing: .singleValue,
            help: ArgumentHelp("Override one key, e.g. --set routing.threshold=0.7 (repeatable).", valueName: "section.key=value"))
    var overrides: [String] = []

    @Option(help: "Expert-worker processes to start (0: experts in this process). Default: training.workers (2).")
    var workers: Int?

    @Option(help: "Optimizer steps to run (training.max_steps).")
    var maxSteps: Int?

    @Option(help: "Seed of every random stream: data, weights, dropout (training.seed).")
    var seed: UInt64?

    @Option(help: "Routing variant (routing.variant): \(RoutingVariant.allCases.map(\.rawValue).joined(separator: ", ")).")
    var variant: String?

    @Option(help: "Directory for metrics.jsonl, config.json and checkpoints.")
    var saveDir: String = "runs/latest"

    @Option(help: "Continue from this checkpoint directory (e.g. runs/latest/checkpoint-last).")
    var resume: String?

    @Option(help: "Transport between coordinator and workers: ipc or tcp (loopback).")
    var transport: String = "ipc"

    @Option(help: ArgumentHelp("Serve workers started on other machines instead of starting local ones: bind this endpoint (e.g. tcp://0.0.0.0:5555) and wait for --workers of them (`thor worker --connect tcp://HOST:5555` on each node).", valueName: "endpoint"))
    var bind: String?

    @Option(help: "Seconds to wait for workers to register with --bind.")
    var registrationTimeout: Double = 300

    @Option(help: "Workers hosting each routed expert (training.replicas; default 2 with at least 2 workers, else 1). Replicas compute the same batches and stay bit-identical; a lost worker's experts fail over to a replica without losing a step.")
    var replicas: Int?

    @Option(help: ArgumentHelp("When every replica of an expert is lost (training.on_expert_loss): fail (stop, naming the experts and the --resume command), wait (until a worker holding them returns), restore (reload the last checkpoint and replay; default).", valueName: "policy"))
    var onExpertLoss: String?

    @Option(help: "How replicas stay identical: shipped-gradients (the primary computes, replicas apply its gradients; default) or active (every replica computes every batch).")
    var replication: String = ReplicationMode.shippedGradients.rawValue

    @Option(help: "Seconds between heartbeats between the coordinator and its workers.")
    var heartbeatInterval: Double = 0.25

    @Option(help: "Missed heartbeats after which a worker is declared dead.")
    var heartbeatLiveness: Int = 3

    @Option(help: "Restarts of a crashing local worker within a minute before it is given up on.")
    var restartBudget: Int = 3

    @Option(help: "Expert placement over workers: round-robin or blocked.")
    var placement: String = "round-robin"

    @Flag(help: "No progress bar (log lines only).")
    var noProgress = false

    @Flag(help: "Skip the final test-set evaluation.")
    var noEval = false

    @Flag(help: "Print the effective configuration as JSON and exit.")
    var printConfig = false

    func effectiveConfiguration() throws -> ThorConfiguration {
        var c = try config.map { try ThorConfiguration(contentsOf: $0) } ?? .quickstart
        var o: [String: String] = [:]
        for s in overrides {
            guard let eq = s.firstIndex(of: "=") else {
                throw ValidationError("--set expects section.key=value, got '\(s)'")
            }
            o[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        if let workers { o["training.workers"] = String(workers) }
        if let maxSteps { o["training.max_steps"] = String(maxSteps) }
        if let seed { o["training.seed"] = String(seed) }
        if let variant { o["routing.variant"] = variant }
        if let replicas { o["training.replicas"] = String(replicas) }
        if let onExpertLoss { o["training.on_expert_loss"] = onExpertLoss }
        if !o.isEmpty { c = try c.applying(overrides: o) }
        return c
    }

    func run() throws {
        let c = try effectiveConfiguration()
        if printConfig { print(c.jsonString, terminator: ""); return }
        guard let t = LocalCluster.Transport(rawValue: transport) else {
            throw ValidationError("--transport must be ipc or tcp, got '\(transport)'")
        }
        guard let p = Placement.Strategy(rawValue: placement) else {
            throw ValidationError("--placement must be \(Placement.Strategy.allCases.map(\.rawValue).joined(separator: " or ")), got '\(placement)'")
        }
        guard heartbeatInterval > 0, heartbeatInterval.isFinite else {
            throw ValidationError("--heartbeat-interval must be a positive number of seconds, got \(heartbeatInterval)")
        }
        guard heartbeatLiveness >= 1 else { throw ValidationError("--heartbeat-liveness must be at least 1, got \(heartbeatLiveness)") }
        guard restartBudget >= 0 else { throw ValidationError("--restart-budget must be ≥ 0, got \(restartBudget)") }
        guard let mode = ReplicationMode(rawValue: replication) else {
            throw ValidationError("--replication must be \(ReplicationMode.allCases.map(\.rawValue).joined(separator: " or ")), got '\(replication)'")
        }
        var options = TrainingRun.Options(configuration: c)
        options.liveness.heartbeatInterval = heartbeatInterval
        options.liveness.heartbeatLiveness = heartbeatLiveness
        options.liveness.restartBudget = restartBudget
        options.liveness.replication = mode
        options.saveDirectory = saveDir
        options.resume = resume
        options.transport = t
        options.placement = p
        options.bind = bind
        options.registrationTimeout = registrationTimeout
        options.progress = !noProgress
        options.evaluateAtEnd = !noEval
        let summary = try TrainingRun(options: options).run()
        if summary.interrupted { throw ExitCode(130) }
    }
}
