import ArgumentParser
import Foundation
import ThorTensor
import ThorModel
import ThorCluster
import ThorTraining

struct ChaosCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos",
        abstract: "Inject faults into a training run on a local cluster and check it ends bit for bit like the run without them.",
        discussion: """
        Runs the training twice against a local cluster of real `thor worker` processes: once \
        without faults, once with the scenario's faults (kill, hang, delay, drop, corrupt, \
        partition at a step and phase, or random from a seed); then compares the two final \
        checkpoints tensor by tensor (weights, Adam moments, training state). Prints a table \
        (fault, detection, recovery and rejoin seconds, steps redone, bitwise equal) on stdout, \
        or with --json one object with faults_injected, bitwise_equal, max_detection_s, \
        max_recovery_s, max_rejoin_s and a per-fault list. Exits 1 when the checkpoints differ \
        or a planned fault never fired. Progress goes to stderr.

        SCENARIO_FILE is a fault plan (JSON, docs/reliability.md; may also set workers, steps, \
        replicas); --scenario names a built-in one: \(ChaosScenarios.names.joined(separator: ", ")). \
        The model is the quick-start one unless --config / --set say otherwise.
        """)

    @Argument(help: "Scenario file (JSON fault plan).")
    var scenarioFile: String?

    @Option(help: "A built-in scenario: \(ChaosScenarios.names.joined(separator: ", ")).")
    var scenario: String?

    @Flag(help: "List the built-in scenarios and exit.")
    var list = false

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    @Option(help: "Worker processes (default: the scenario's, else 3).")
    var workers: Int?

    @Option(help: "Optimizer steps per run (default: the scenario's, else 10).")
    var steps: Int?

    @Option(help: "Replicas per expert (default: the scenario's, else 2).")
    var replicas: Int?

    @Option(help: "Seed of the training run and of random faults (kill-random).")
    var seed: UInt64 = 1

    @Option(help: "Configuration file of the model (default: the quick-start model).")
    var config: String?

    @Option(name: .customLong("set"), parsing: .singleValue,
            help: ArgumentHelp("Override one configuration key (repeatable).", valueName: "section.key=value"))
    var overrides: [String] = []

    @Option(help: "Directory for the two runs (default: a temporary one, removed at the end).")
    var keep: String?

    func run() throws {
        if list {
            for n in ChaosScenarios.names { print("\(n)\t\(ChaosScenarios.plan(n, seed: seed, steps: 10)!.description ?? "")") }
            return
        }
        let plan: FaultPlan, name: String
        switch (scenarioFile, scenario) {
        case (nil, nil): throw ValidationError("give a scenario file or --scenario NAME (\(ChaosScenarios.names.joined(separator: ", ")))")
        case (.some, .some): throw ValidationError("give a scenario file or --scenario, not both")
        case (let file?, nil):
            do { plan = try FaultPlan(contentsOf: file) } catch { throw ValidationError("\(error)") }
            name = plan.name ?? URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        case (nil, let n?):
            let s = steps ?? 10
            guard let p = ChaosScenarios.plan(n, seed: seed, steps: s) else {
                throw ValidationError("--scenario must be one of \(ChaosScenarios.names.joined(separator: ", ")), got '\(n)'")
            }
            plan = p
            name = n
        }
        let w = workers ?? plan.workers ?? 3
        let s = steps ?? plan.steps ?? 10
        let r = replicas ?? plan.replicas ?? 2
        guard w >= 1 else { throw ValidationError("--workers must be ≥ 1, got \(w)") }
        guard s >= 1 else { throw ValidationError("--steps must be ≥ 1, got \(s)") }
        guard r >= 1, r <= w else { throw ValidationError("--replicas must be in 1…\(w) (the workers), got \(r)") }
        var c = try config.map { try ThorConfiguration(contentsOf: $0) } ?? .quickstart
        var o = try ThorConfiguration.overrides(overrides)
        o["cluster.workers"] = String(w)
        o["cluster.replicas"] = String(r)
        o["training.max_steps"] = String(s)
        o["training.seed"] = String(seed)
        c = try c.applying(overrides: o)
        var options = TrainingRun.Options(configuration: c)
        options.explicitKeys = o
        let dir = keep ?? NSTemporaryDirectory() + "thor-chaos-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        let experiment = ChaosExperiment(options: options, plan: plan, scenario: name, directory: dir)
        experiment.keep = keep != nil
        let report = try experiment.run()
        if json {
            let data = try JSONSerialization.data(withJSONObject: report.json, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(report.table)
        }
        if !report.bitwiseEqual {
            FileHandle.standardError.write(Data("thor chaos: the final checkpoints differ: \(report.differences.prefix(5).joined(separator: "; "))\n".utf8))
            throw ExitCode(1)
        }
        if !report.unfired.isEmpty {
            FileHandle.standardError.write(Data("thor chaos: planned faults never fired (the run has no such step or phase): \(report.unfired.map(\.description).joined(separator: "; "))\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// The built-in scenarios of `thor chaos --scenario` (their files are in cluster/scenarios/).
enum ChaosScenarios {
    static let names = ["kill-forward", "kill-random", "hang", "delay", "drop", "corrupt", "replies", "partition", "mixed"]

    static func plan(_ name: String, seed: UInt64, steps: Int) -> FaultPlan? {
        let mid = max(2, min(steps - 1, 3))
        var p: FaultPlan
        switch name {
        case "kill-forward":
            p = FaultPlan(faults: [FaultSpec(kind: .kill, step: mid, phase: .forward, worker: "w1")])
            p.description = "SIGKILL worker w1 during the forward pass of step \(mid)"
        case "kill-random":
            p = FaultPlan(random: RandomFaults(seed: seed, count: 2, kinds: [.kill], firstStep: 2, lastStep: max(2, steps - 1)))
            p.description = "SIGKILL two random workers at random steps and phases (from --seed)"
        case "hang":
            p = FaultPlan(faults: [FaultSpec(kind: .hang, step: mid, phase: .backward, worker: "w2", durationSeconds: 1)])
            p.description = "SIGSTOP worker w2 for 1 s during the backward pass of step \(mid)"
        case "delay":
            p = FaultPlan(faults: [FaultSpec(kind: .delay, step: mid, phase: .forward, delayMilliseconds: 300),
                                   FaultSpec(kind: .delay, step: mid, phase: .step, layer: nil, delayMilliseconds: 300)])
            p.description = "hold the first forward request and the first optimizer-step request of step \(mid) 300 ms each"
        case "drop":
            p = FaultPlan(faults: [FaultSpec(kind: .drop, step: mid, phase: .forward),
                                   FaultSpec(kind: .drop, step: mid, phase: .step)])
            p.description = "lose the first forward request and the first optimizer-step request of step \(mid)"
        case "corrupt":
            p = FaultPlan(faults: [FaultSpec(kind: .corrupt, step: mid, phase: .backward),
                                   FaultSpec(kind: .corrupt, step: mid, phase: .step)])
            p.description = "damage the first backward request and the first optimizer-step request of step \(mid)"
        case "replies":
            p = FaultPlan(faults: [FaultSpec(kind: .drop, step: mid, phase: .step, direction: .reply),
                                   FaultSpec(kind: .corrupt, step: mid, phase: .backward, direction: .reply),
                                   FaultSpec(kind: .delay, step: mid, phase: .forward, delayMilliseconds: 1_500, direction: .reply)])
            p.description = "lose the first optimizer-step reply, damage the first backward reply and hold the first forward reply 1.5 s, of step \(mid)"
        case "partition":
            p = FaultPlan(faults: [FaultSpec(kind: .partition, step: mid, phase: .forward, worker: "w1", durationSeconds: 1.5)])
            p.description = "cut worker w1 off both ways for 1.5 s from the forward pass of step \(mid)"
        case "mixed":
            let s = max(6, steps)
            p = FaultPlan(faults: [FaultSpec(kind: .drop, step: 2, phase: .step),
                                   FaultSpec(kind: .kill, step: 3, phase: .forward, worker: "w1"),
                                   FaultSpec(kind: .corrupt, step: min(s - 1, 5), phase: .forward),
                                   FaultSpec(kind: .hang, step: min(s - 1, 6), phase: .backward, worker: "w0", durationSeconds: 1)])
            p.description = "drop, kill, corrupt and hang at steps 2, 3, 5 and 6"
        default: return nil
        }
        p.name = name
        return p
    }
}
