import ArgumentParser
import Foundation
import ThorTensor
import ThorCluster
import ThorTraining

/// `thor experiment scaling`: a sweep over workers, experts, tokens, width, transport, wire
/// dtype and replicas on real worker processes; results, plots and the cost model's check.
struct ExperimentScalingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scaling",
        abstract: "Sweep workers, experts, tokens, width, transport, wire dtype and replicas; fit and check the cost model.",
        discussion: """
        Every configuration (the cartesian product of the lists) runs on real `thor worker` \
        processes on this machine (one thread each): a training step of self-attention, the task \
        level and two THOR top-p encoder MoE layers (p = 0.5, d_ff = 4·width, sentences of 32 \
        positions), backward, and the experts' gradient norms and Adam step. Every configuration's \
        cluster is started (one warm-up step each), then --passes rounds each run a share of the \
        --repeats timed steps of every configuration in turn, so load from other work on the \
        machine spreads over all configurations; the best step's phases are kept (attention, \
        routing, combine, encode, wait, decode, optimizer, other), with the coordinator's and the \
        workers' CPU time next to the wall time. At most 16 workers are up at once (larger sweeps \
        run in groups). When a configuration has more workers than cores, the table marks it \
        (the workers share the cores while they compute; the CPU time shows it).

        Results are appended to --out/results.jsonl and results.csv; running again skips the \
        configurations already there (resume), and the plots and the table cover everything in \
        the file. Plots: throughput.svg (tokens/s against workers, ideal line), phases.svg \
        (stacked per-phase bars), expert-load.svg (heat map of each layer's routed rows per \
        worker), wire-bytes.svg, cost-model.svg (held-out predictions).

        The cost model (docs/scaling.md) is built from component rates measured first \
        (--out/rates.json, reused): expert FFN and attention flop/s per core, routing and combine \
        cost, codec rates, Adam, ipc and tcp loopback latency and bandwidth. Every third \
        configuration is held out; the model is fitted on the rest and predicts each held-out step; \
        their relative errors are reported. The model fitted on all configurations goes to \
        --out/cost-model.json for `thor experiment predict`.

        --sweep FILE: a JSON object with any of the keys workers, experts, tokens, width, \
        transport, wire_dtype, replicas (lists), repeats and passes; flags given override it. \
        Defaults: 10 repeats in 5 passes. --quick: workers 1,2,4, experts 4,8, 512 tokens, width 64, \
        ipc, f32, 120 repeats in 30 passes (6 configurations, under a minute). Progress and ETA on stderr; the table (or one JSON object with --json) on stdout.
        """
    )

    @Option(help: "A sweep file (JSON object of lists).") var sweep: String?
    @Option(help: ArgumentHelp("Worker processes.", valueName: "list")) var workers: String?
    @Option(help: ArgumentHelp("Experts per MoE layer.", valueName: "list")) var experts: String?
    @Option(help: ArgumentHelp("Tokens per batch (whole sentences of 32).", valueName: "list")) var tokens: String?
    @Option(help: ArgumentHelp("Model width d (a multiple of 4; d_ff = 4d).", valueName: "list")) var width: String?
    @Option(help: ArgumentHelp("Transports: ipc, tcp, netns (each worker on its own emulated node: a network namespace joined by a veth link, tcp across it; needs root).", valueName: "list")) var transport: String?
    @Option(name: .customLong("wire-dtype"), help: ArgumentHelp("Tensor dtypes on the wire: f32, bf16.", valueName: "list"))
    var wireDType: String?
    @Option(help: ArgumentHelp("Replicas of every expert (≤ workers; larger combinations are skipped).", valueName: "list"))
    var replicas: String?
    @Option(help: "Timed steps per configuration (after one warm-up).") var repeats: Int?
    @Option(help: ArgumentHelp("Rounds the timed steps are split into; each round runs every configuration in turn (their clusters stay up), so a burst of load on a shared machine spreads over all configurations.", valueName: "n"))
    var passes: Int?
    @Option(help: "Directory for results.jsonl, results.csv, rates.json, cost-model.json and the plots.")
    var out = "runs/scaling"
    @Flag(help: "A short sweep: 6 configurations of a small model.") var quick = false
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    struct Sweep: Decodable {
        var workers: [Int]?, experts: [Int]?, tokens: [Int]?, width: [Int]?
        var transport: [String]?, wireDtype: [String]?, replicas: [Int]?, repeats: Int?, passes: Int?
    }

    /// The configurations, in sweep order, and the repeats.
    func plan() throws -> (configurations: [ScalingConfiguration], repeats: Int, passes: Int) {
        var s = Sweep()
        if quick { s = Sweep(workers: [1, 2, 4], experts: [4, 8], tokens: [512], width: [64], transport: ["ipc"],
                             wireDtype: ["f32"], replicas: [1], repeats: 120, passes: 30) }
        if let sweep {
            guard let data = FileManager.default.contents(atPath: sweep) else { throw ValidationError("--sweep: cannot read \(sweep)") }
            let d = JSONDecoder(); d.keyDecodingStrategy = .convertFromSnakeCase
            let file: Sweep
            do { file = try d.decode(Sweep.self, from: data) } catch {
                throw ValidationError("--sweep \(sweep): not a sweep object (keys workers, experts, tokens, width, transport, wire_dtype, replicas: lists of values; repeats, passes: numbers): \(error)")
            }
            s.workers = file.workers ?? s.workers; s.experts = file.experts ?? s.experts; s.tokens = file.tokens ?? s.tokens
            s.width = file.width ?? s.width; s.transport = file.transport ?? s.transport
            s.wireDtype = file.wireDtype ?? s.wireDtype; s.replicas = file.replicas ?? s.replicas; s.repeats = file.repeats ?? s.repeats
            s.passes = file.passes ?? s.passes
        }
        func ints(_ text: String?, _ flag: String) throws -> [Int]? {
            guard let text else { return nil }
            let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            return try parts.map { p in
                guard let v = Int(p) else { throw ValidationError("--\(flag): '\(p)' is not an integer (give a comma-separated list)") }
                return v
            }
        }
        func words(_ text: String?) -> [String]? { text.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() } } }
        let w = try ints(workers, "workers") ?? s.workers ?? [1, 2]
        let e = try ints(experts, "experts") ?? s.experts ?? [8]
        let n = try ints(tokens, "tokens") ?? s.tokens ?? [512]
        let d = try ints(width, "width") ?? s.width ?? [64]
        let t = words(transport) ?? s.transport ?? ["ipc"]
        let dt = words(wireDType) ?? s.wireDtype ?? ["f32"]
        let r = try ints(replicas, "replicas") ?? s.replicas ?? [1]
        let reps = repeats ?? s.repeats ?? 10
        let rounds = passes ?? s.passes ?? 5
        for (name, list) in [("workers", w), ("experts", e), ("tokens", n), ("width", d), ("replicas", r)] {
            guard !list.isEmpty, list.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--\(name) needs values ≥ 1, got \(list)") }
        }
        guard w.allSatisfy({ $0 <= 64 }) else { throw ValidationError("--workers: at most 64 worker processes on one machine, got \(w.max()!)") }
        guard e.allSatisfy({ $0 >= 2 }) else { throw ValidationError("--experts needs ≥ 2 experts per layer, got \(e)") }
        guard d.allSatisfy({ $0 % ScalingConfiguration.heads == 0 }) else { throw ValidationError("--width must be multiples of \(ScalingConfiguration.heads), got \(d)") }
        guard n.allSatisfy({ $0 >= ScalingConfiguration.length }) else { throw ValidationError("--tokens must be ≥ \(ScalingConfiguration.length) (one sentence), got \(n)") }
        for x in t where LocalCluster.Transport(rawValue: x) == nil && x != ScalingConfiguration.emulatedNodesTransport {
            throw ValidationError("--transport: unknown transport '\(x)' (ipc, tcp or netns)")
        }
        if t.contains(ScalingConfiguration.emulatedNodesTransport) {
            do { try NetworkTools.checkPrivilege(purpose: "--transport netns (emulated nodes)") } catch {
                throw ValidationError("--transport netns: \(error)")
            }
            guard NetworkTools().locate("ip") != nil else {
                throw ValidationError("--transport netns needs `ip` (Debian package iproute2)")
            }
        }
        for x in dt where !["f32", "bf16"].contains(x) { throw ValidationError("--wire-dtype: unknown dtype '\(x)' (f32 or bf16)") }
        guard reps >= 1 else { throw ValidationError("--repeats must be ≥ 1, got \(reps)") }
        guard rounds >= 1 else { throw ValidationError("--passes must be ≥ 1, got \(rounds)") }
        var out: [ScalingConfiguration] = []
        for tr in t { for dtype in dt { for rep in r { for width in d { for tok in n { for ex in e { for wk in w where rep <= wk {
            out.append(ScalingConfiguration(workers: wk, experts: ex, tokens: tok, width: width, transport: tr, wireDType: dtype, replicas: rep))
        } } } } } } }
        guard !out.isEmpty else { throw ValidationError("the sweep is empty (every replica count exceeds every worker count)") }
        return (out, reps, min(rounds, reps))
    }

    func run() throws {
        let (configurations, reps, passes) = try plan()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let resultsPath = out + "/results.jsonl", ratesPath = out + "/rates.json"
        func info(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        var results = try ScalingSweep.load(resultsPath)
        // Component rates (measured once, completed for new widths and expert counts).
        let previous = FileManager.default.contents(atPath: ratesPath).flatMap { try? JSONDecoder().decode(ComponentRates.self, from: $0) }
        let rates = try ScalingRateProbe.complete(previous, for: configurations, info: info)
        if rates != previous { try writeJSON(rates, to: ratesPath) }

        let done = Set(results.map(\.key))
        let todo = configurations.filter { !done.contains($0.key) }
        if todo.count < configurations.count { info("resuming: \(configurations.count - todo.count) of \(configurations.count) configurations already in \(resultsPath)") }
        let start = MonotonicClock.seconds()
        for c in todo where c.workers > cores {
            info("note: \(c.label): \(c.workers) workers compute at once on \(cores) cores (CPU time is recorded next to wall time)")
        }
        var finished = 0
        _ = try ScalingSweep.measure(todo, repeats: reps, passes: passes, cores: cores, progress: info) { r in
            try ScalingSweep.append(r, directory: out)
            results.append(r)
            finished += 1
            let elapsed = MonotonicClock.seconds() - start
            let eta = elapsed / Double(finished) * Double(todo.count - finished)
            info(String(format: "[%d/%d] %@: %.1f ms/step (best of %d), %.0f tokens/s, CPU %.2f× wall, load %.1f; ETA %d:%02d",
                        finished, todo.count, r.label, r.stepSeconds * 1000, r.repeats, r.tokensPerSecond,
                        (r.coordinatorCpuSeconds + r.workerCpuSeconds) / r.meanStepSeconds, r.loadAverage, Int(eta) / 60, Int(eta) % 60))
        }
        // Results in this sweep's order first, then any others in the file.
        let keys = configurations.map(\.key)
        let ordered = keys.compactMap { k in results.last { $0.key == k } }
            + results.filter { !keys.contains($0.key) }.reduce(into: [ScalingResult]()) { acc, r in
                if let i = acc.firstIndex(where: { $0.key == r.key }) { acc[i] = r } else { acc.append(r) } }
        let validation = try ScalingSweep.validate(ordered, rates: rates)
        if ordered.count >= 2 {
            let all = try ScalingCostModel.fit(ordered.map(ScalingSweep.observation), rates: rates)
            try writeJSON(all, to: out + "/cost-model.json")
        }
        let plots = try ScalingSweep.plots(ordered, predicted: validation.predicted, directory: out)
        if json {
            printJSON(ordered, validation: validation, plots: plots)
        } else {
            printTable(ordered, validation: validation, plots: plots, cores: cores)
        }
    }

    func writeJSON<T: Encodable>(_ value: T, to path: String) throws {
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys]
        try e.encode(value).write(to: URL(fileURLWithPath: path))
    }

    func printTable(_ results: [ScalingResult], validation v: ScalingSweep.Validation, plots: [String], cores: Int) {
        var report = BenchReport(
            title: "thor experiment scaling: \(results.count) configurations, \(cores) cores, ms: median over the passes of each pass's best step (CPU: mean per step); * = held out",
            columns: ["ms", "best", "median", "tokens/s", "speedup"] + ScalingPhase.allCases.map(\.rawValue)
                + ["wait: worker", "wait: wire", "coord CPU", "worker CPU", "CPU/wall", "cores", "MB/step", "e/token", "imbal.", "load", "predicted", "error"])
        for r in results {
            var base = r.configuration; base.workers = 1
            let one = results.first { $0.configuration == base }
            func ms(_ s: Double) -> String { String(format: "%.2f", s * 1000) }
            var cells = ["ms": ms(r.stepSeconds), "best": r.bestStepSeconds.map(ms) ?? "", "median": ms(r.medianStepSeconds), "tokens/s": String(format: "%.0f", r.tokensPerSecond),
                         "speedup": one.map { String(format: "%.2f", r.tokensPerSecond / $0.tokensPerSecond) } ?? "",
                         "coord CPU": ms(r.coordinatorCpuSeconds), "worker CPU": ms(r.workerCpuSeconds),
                         "CPU/wall": String(format: "%.2f", (r.coordinatorCpuSeconds + r.workerCpuSeconds) / r.meanStepSeconds),
                         "cores": r.oversubscribed ? "\(r.busyProcesses)>\(r.cores)!" : "\(r.busyProcesses)/\(r.cores)",
                         "MB/step": String(format: "%.2f", Double(r.bytesSent + r.bytesReceived) / 1e6),
                         "e/token": String(format: "%.2f", r.expertsPerToken), "imbal.": String(format: "%.2f", r.imbalance),
                         "load": String(format: "%.1f", r.loadAverage)]
            for p in ScalingPhase.allCases { cells[p.rawValue] = ms(r.phases[p] ?? 0) }
            if let c = r.waitCompute, let w = r.waitWire { cells["wait: worker"] = ms(c); cells["wait: wire"] = ms(w) }
            if let p = v.predicted[r.key] { cells["predicted"] = ms(p); cells["error"] = String(format: "%.1f%%", 100 * v.errors[r.key]!) }
            report.addRow((v.predicted[r.key] != nil ? "* " : "  ") + r.label, cells)
        }
        if let m = v.maxError { report.set("cost_model_max_relative_error (held out)", String(format: "%.3f", m)) }
        else { report.set("cost_model", "not validated (needs ≥ 3 configurations)") }
        report.set("plots", plots.joined(separator: " "))
        print(report.table(), terminator: "")
    }

    func printJSON(_ results: [ScalingResult], validation v: ScalingSweep.Validation, plots: [String]) {
        let configurations: [[String: Any]] = results.map { r in
            var d: [String: Any] = ["key": r.key, "label": r.label, "workers": r.configuration.workers, "experts": r.configuration.experts,
                                    "tokens": r.configuration.batchTokens, "width": r.configuration.width,
                                    "transport": r.configuration.transport, "wire_dtype": r.configuration.wireDType,
                                    "replicas": r.configuration.replicas, "step_seconds": r.stepSeconds,
                                    "median_step_seconds": r.medianStepSeconds, "tokens_per_second": r.tokensPerSecond,
                                    "mean_step_seconds": r.meanStepSeconds, "coordinator_cpu_seconds": r.coordinatorCpuSeconds, "worker_cpu_seconds": r.workerCpuSeconds,
                                    "oversubscribed": r.oversubscribed, "bytes_per_step": r.bytesSent + r.bytesReceived,
                                    "experts_per_token": r.expertsPerToken, "imbalance": r.imbalance, "load_average": r.loadAverage,
                                    "phases": Dictionary(uniqueKeysWithValues: ScalingPhase.allCases.map { ($0.rawValue, r.phases[$0] ?? 0) }),
                                    "held_out": v.predicted[r.key] != nil]
            if let p = v.predicted[r.key] { d["predicted_step_seconds"] = p; d["relative_error"] = v.errors[r.key]! }
            if let c = r.waitCompute, let w = r.waitWire { d["wait_compute_seconds"] = c; d["wait_wire_seconds"] = w }
            if let b = r.bestStepSeconds { d["best_step_seconds"] = b }
            return d
        }
        var obj: [String: Any] = ["configurations": configurations, "plots": plots,
                                  "results": out + "/results.jsonl", "held_out": v.heldOut, "training": v.training]
        obj["cost_model_max_relative_error"] = v.maxError ?? NSNull()
        obj["goal_cost_model_error_le_0.15"] = v.maxError.map { $0 <= 0.15 } ?? NSNull()
        let data = try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }
}
