import ArgumentParser
import Foundation
import ThorTensor
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

        Precedence: the config file, then each --set, then the explicit flags. A save directory \
        holds one run: one that holds another run's files is refused unless --resume points into \
        it (the run continues; metrics.jsonl drops records after the checkpoint's step) or \
        --overwrite is given. With --resume the checkpoint's configuration is used; keys given by \
        --config, --set or the flags must agree with it, except training.max_steps, the \
        training intervals, evaluation.* and cluster.* (e.g. --workers), which may change.
        Info lines go to stderr, the results (test table, tokens/s) to stdout.
        """)

    @Option(name: .long, help: "Configuration file (JSON; see docs/configuration.md).")
    var config: String?

    @Option(name: .customLong("set"), parsing: .singleValue,
            help: ArgumentHelp("Override one key, e.g. --set routing.threshold=0.7 (repeatable).", valueName: "section.key=value"))
    var overrides: [String] = []

    @Option(help: "Expert-worker processes to start (0: experts in this process). Default: cluster.workers (2).")
    var workers: Int?

    @Option(help: ArgumentHelp("Data-parallel coordinators (docs/data-parallel.md): this process leads and starts C − 1 follower coordinators (`thor coordinator`); coordinator c takes shard c of every batch, all share the workers. Sets training.micro_batches = C (another value is refused): the checkpoint equals the in-process run with C micro-batches, byte for byte.", valueName: "C"))
    var coordinators: Int = 1

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

    @Option(help: ArgumentHelp("With --bind: the coordinator's CURVE secret key file (mode 0600). Links are encrypted and only workers whose keys are allowed can join.", valueName: "file"))
    var serverKey: String?

    @Option(help: ArgumentHelp("With --bind: the workers' public keys, a directory of *.pub files or one file of keys.", valueName: "dir-or-file"))
    var allowedKeys: String?

    @Flag(help: "Allow --bind beyond loopback without keys (unencrypted; any machine that reaches the port can join).")
    var insecure = false

    @Option(help: "Seconds to wait for workers to register with --bind.")
    var registrationTimeout: Double = 300

    @Option(help: "Workers hosting each routed expert (cluster.replicas; default 2 with at least 2 workers, else 1). Replicas stay bit-identical (they apply the primary's gradients, or compute the same batches with --replication active); a lost worker's experts fail over to a replica without losing a step.")
    var replicas: Int?

    @Option(help: ArgumentHelp("When every replica of an expert is lost (cluster.on_expert_loss): fail (stop, naming the experts and the --resume command), wait (until a worker holding them returns), restore (reload the last checkpoint and replay; default).", valueName: "policy"))
    var onExpertLoss: String?

    @Option(help: "How replicas stay identical: shipped-gradients (the primary computes, replicas apply its gradients; default) or active (every replica computes every batch).")
    var replication: String = ReplicationMode.shippedGradients.rawValue

    @Option(help: "Seconds between heartbeats between the coordinator and its workers.")
    var heartbeatInterval: Double = 0.25

    @Option(help: "Missed heartbeats after which a worker is declared dead (default 5: 1.25 s at 0.25 s; a hung worker is detected within about 1.4 s, a killed local one at once; see docs/reliability.md).")
    var heartbeatLiveness: Int = TrainCommand.defaultHeartbeatLiveness

    /// `thor train`'s liveness window in beats: 5 × 0.25 s = 1.25 s. The longest silence of a live worker
    /// measured on a loaded 2-core machine once beats had their own connection was 1.01 s (3 would have
    /// declared it lost); a hang is still detected within the 1.5 s goal (docs/reliability.md).
    static let defaultHeartbeatLiveness = 5

    @Option(help: "Restarts of a crashing local worker within a minute before it is given up on.")
    var restartBudget: Int = 3

    @Option(help: ArgumentHelp("Run the workers on N emulated nodes (cluster.emulate_nodes): N network namespaces, each joined to this process by a veth link, tcp over them; replicas go to different nodes. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`; the namespaces are removed on exit. See docs/emulated-nodes.md.", valueName: "N"))
    var emulateNodes: Int?

    @Option(help: ArgumentHelp("Rate limit of each emulated node's link, both ways (cluster.link_rate; kernel tbf), e.g. 1gbit, 100mbit.", valueName: "rate"))
    var link: String?

    @Option(help: "Expert placement over workers: round-robin or blocked.")
    var placement: String = "round-robin"

    @Option(help: ArgumentHelp("Inject the faults of this plan (JSON: kill, hang, delay, drop, corrupt, partition at a step and phase, or random from a seed; see docs/reliability.md). Off without it. Every fault is logged to stderr and metrics.jsonl.", valueName: "file"))
    var faultPlan: String?

    @Option(help: ArgumentHelp("Serve live metrics on this TCP port while training: GET /metrics answers in Prometheus' text format (step, losses, tokens/s, per-phase seconds, experts per token, expert load, worker liveness; see docs/configuration.md). 0 picks a free port (printed on stderr). A port in use is an error.", valueName: "port"))
    var metricsPort: Int?

    @Option(help: ArgumentHelp("The IPv4 address the metrics endpoint listens on (0.0.0.0: every interface).", valueName: "address"))
    var metricsAddress: String = "127.0.0.1"

    @Flag(help: "Replace another run's files in --save-dir (without it such a directory is refused).")
    var overwrite = false

    @Flag(help: "No progress bar (info lines on stderr only).")
    var noProgress = false

    @Flag(help: "Skip the final test-set evaluation.")
    var noEval = false

    @Flag(help: "Print the effective configuration as JSON and exit.")
    var printConfig = false

    /// The configuration file's keys as `section.key` → value text (what the file states explicitly).
    func fileKeys() throws -> [String: String] {
        guard let config else { return [:] }
        guard let data = FileManager.default.contents(atPath: config), case .object(let root) = try JSONValue.parse(data) else {
            return [:]
        }
        var keys: [String: String] = [:]
        for (section, value) in root {
            guard case .object(let members) = value else { continue }
            for (key, v) in members where v != .null { keys["\(section).\(key)"] = v.serialized() }
        }
        return keys
    }

    /// The keys given by `--set` and the flags, as `section.key` → value text.
    func flagKeys() throws -> [String: String] {
        var o = try ThorConfiguration.overrides(overrides)
        if let workers { o["cluster.workers"] = String(workers) }
        if let maxSteps { o["training.max_steps"] = String(maxSteps) }
        if coordinators > 1, o["training.micro_batches"] == nil { o["training.micro_batches"] = String(coordinators) }
        if let seed { o["training.seed"] = String(seed) }
        if let variant { o["routing.variant"] = variant }
        if let replicas { o["cluster.replicas"] = String(replicas) }
        if let onExpertLoss { o["cluster.on_expert_loss"] = onExpertLoss }
        if let emulateNodes { o["cluster.emulate_nodes"] = String(emulateNodes) }
        if let link { o["cluster.link_rate"] = link }
        return o
    }

    func effectiveConfiguration() throws -> ThorConfiguration {
        let c = try config.map { try ThorConfiguration(contentsOf: $0) } ?? .quickstart
        let o = try flagKeys()
        return o.isEmpty ? c : try c.applying(overrides: o)
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
        if let bind { do { try Endpoint.validate(bind, binding: true) } catch { throw ValidationError("--bind: \(error)") } }
        guard heartbeatInterval > 0, heartbeatInterval.isFinite else {
            throw ValidationError("--heartbeat-interval must be a positive number of seconds, got \(heartbeatInterval)")
        }
        guard heartbeatLiveness >= 1 else { throw ValidationError("--heartbeat-liveness must be at least 1, got \(heartbeatLiveness)") }
        // Like --bind, keys describe this deployment, not the run: they stay out of the saved configuration.
        let security = try CoordinatorKeyOptions.security(bind: bind, serverKey: serverKey, allowedKeys: allowedKeys, insecure: insecure)
        if let metricsPort, !(0...65535).contains(metricsPort) {
            throw ValidationError("--metrics-port must be a TCP port (0–65535), got \(metricsPort)")
        }
        guard coordinators >= 1 else { throw ValidationError("--coordinators must be at least 1, got \(coordinators)") }
        if coordinators > 1 {
            if let given = try fileKeys().merging(ThorConfiguration.overrides(overrides), uniquingKeysWith: { $1 })["training.micro_batches"], given != String(coordinators) {
                throw ValidationError("--coordinators \(coordinators) needs training.micro_batches = \(coordinators) (coordinator c takes shard c of \(coordinators)), got \(given)")
            }
            if bind != nil { throw ValidationError("--coordinators with --bind is not supported yet: start `thor coordinator` and `thor worker --coordinator` by hand") }
            if faultPlan != nil { throw ValidationError("--coordinators with --fault-plan is not supported yet (docs/data-parallel.md, step 4)") }
        }
        guard restartBudget >= 0 else { throw ValidationError("--restart-budget must be ≥ 0, got \(restartBudget)") }
        guard let mode = ReplicationMode(rawValue: replication) else {
            throw ValidationError("--replication must be \(ReplicationMode.allCases.map(\.rawValue).joined(separator: " or ")), got '\(replication)'")
        }
        var options = TrainingRun.Options(configuration: c)
        options.explicitKeys = try fileKeys().merging(flagKeys()) { $1 }
        options.liveness.heartbeatInterval = heartbeatInterval
        options.liveness.heartbeatLiveness = heartbeatLiveness
        options.liveness.restartBudget = restartBudget
        options.liveness.replication = mode
        options.saveDirectory = saveDir
        options.resume = resume
        options.overwrite = overwrite
        options.transport = t
        options.placement = p
        options.bind = bind
        options.security = security
        options.registrationTimeout = registrationTimeout
        options.evaluateAtEnd = !noEval
        if let faultPlan {
            do { options.faultPlan = try FaultPlan(contentsOf: faultPlan) } catch { throw ValidationError("--fault-plan: \(error)") }
        }
        options.metricsPort = metricsPort
        options.metricsAddress = metricsAddress
        options.coordinators = coordinators
        let run = TrainingRun(options: options)
        if !noProgress {
            // One bar on stderr; info lines end its line first.
            final class Display { var bar: ProgressBar? }
            let display = Display()
            let info = run.info
            run.info = { line in display.bar?.finish(); info(line) }
            run.onStep = { p in
                if display.bar == nil { display.bar = ProgressBar(total: p.maxSteps, label: "train") }
                let r = p.result
                display.bar?.update(p.step, [
                    "loss": String(format: "%.3f", r.loss),
                    "L_mt": String(format: "%.3f", r.translationLoss),
                    "L_task": r.auxiliary.task.map { String(format: "%.3f", $0) } ?? "-",
                    "lb": String(format: "%.3f", (r.auxiliary.taskBalance ?? 0) + (r.auxiliary.tokenBalance ?? 0)),
                    "tok/s": p.tokensPerSecond.map { String(format: "%.0f", $0) } ?? "…",
                    "exp/tok": p.expertsPerToken.map { String(format: "%.2f", $0) } ?? "…"])
            }
        }
        let summary = try run.run()
        if summary.interrupted { throw ExitCode(130) }
    }
}
