import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorWire
import ThorCluster
import ThorTraining

/// One configuration's measured figures: a line of results.jsonl and a row of results.csv.
struct ScalingResult: Codable {
    var key: String
    var label: String
    var configuration: ScalingConfiguration
    var repeats: Int
    /// The configuration's step: the median over the passes of each pass's best step (its
    /// phases are kept); with one pass the best step. The best and the median of all timed
    /// steps next to it (best and passes nil in results from before passes existed).
    var stepSeconds: Double, bestStepSeconds: Double?, passes: Int?, medianStepSeconds: Double
    /// Mean step seconds, and the mean CPU seconds per step of the coordinator and of all workers
    /// (over the timed steps: compare CPU with this wall time).
    var meanStepSeconds: Double
    var tokensPerSecond: Double
    var phases: [ScalingPhase: Double]
    var coordinatorCpuSeconds: Double, workerCpuSeconds: Double
    /// Processes computing at once during the experts' phase (the workers) and the cores.
    var busyProcesses: Int, cores: Int
    var oversubscribed: Bool
    /// Per worker: CPU seconds per timed step, and its own decode/queue/compute/encode seconds
    /// in the best step's expert exchanges (from the timings on its replies).
    var workers: [WorkerPhaseSample]
    /// The best step's `wait` split: the busiest worker's decode + queue + compute + encode, and
    /// the rest (latency, transfer, the coordinator's socket I/O). Nil in results from before.
    var waitCompute: Double?, waitWire: Double?
    /// The workers' own time in the best step's expert exchanges, uncapped: per exchange the
    /// busiest worker's decode + queue + compute + encode, summed (nil in results from before).
    var workerSeconds: Double?
    var bytesSent: Int, bytesReceived: Int, requests: Int
    var expertsPerToken: Double, imbalance: Double
    /// Share of each MoE layer's routed rows per worker: [layer][worker].
    var load: [[Double]]
    var loadAverage: Double
    var workload: ScalingWorkload
    var date: String
}

/// Runs a sweep's configurations, appends results, fits and validates the cost model, plots.
enum ScalingSweep {
    static let csvColumns = ["key", "workers", "experts", "tokens", "width", "transport", "wire_dtype", "replicas", "repeats",
                             "step_ms", "median_step_ms", "mean_step_ms", "tokens_per_s"] + ScalingPhase.allCases.map { $0.rawValue + "_ms" }
        + ["coordinator_cpu_ms", "worker_cpu_ms", "busy_processes", "cores", "oversubscribed", "bytes_sent", "bytes_received",
           "requests", "experts_per_token", "imbalance", "load_average", "wait_compute_ms", "wait_wire_ms",
           "best_step_ms", "passes", "worker_ms"]

    /// Measures one configuration on real worker processes: one warm-up step, then `repeats` timed steps.
    static func measure(_ c: ScalingConfiguration, repeats: Int, cores: Int) throws -> ScalingResult {
        try measure([c], repeats: repeats, passes: 1, cores: cores) { _ in }.first!
    }

    /// Measures `configurations` interleaved: their clusters are started together (a warm-up step
    /// each), then `passes` rounds each run ⌈repeats/passes⌉ timed steps of every configuration
    /// in turn, so a burst of load on the shared machine slows a few steps of every configuration
    /// instead of all steps of one. `done` is called with each result as its group finishes. At
    /// most `maxWorkers` worker processes are alive at once (larger sweeps run in groups).
    static func measure(_ configurations: [ScalingConfiguration], repeats: Int, passes: Int, cores: Int,
                        maxWorkers: Int = 16, progress: (String) -> Void = { _ in },
                        done: (ScalingResult) throws -> Void) throws -> [ScalingResult] {
        let saved = BLASThreads.current
        BLASThreads.set(1)
        defer { BLASThreads.set(saved) }
        var groups: [[ScalingConfiguration]] = []
        for c in configurations {
            if let last = groups.last, last.reduce(0, { $0 + $1.workers }) + c.workers <= maxWorkers {
                groups[groups.count - 1].append(c)
            } else { groups.append([c]) }
        }
        let rounds = max(1, min(passes, repeats))
        let perRound = (max(1, repeats) + rounds - 1) / rounds
        var out: [ScalingResult] = []
        for group in groups {
            var sessions: [ScalingSession] = []
            defer { for s in sessions { s.shutdown() } }
            for c in group { sessions.append(try ScalingSession(c)) }
            for round in 0..<rounds {
                for s in sessions { try s.run(steps: perRound) }
                if rounds > 1 { progress("pass \(round + 1)/\(rounds): \(sessions.map(\.configuration.label).joined(separator: ", "))") }
            }
            for s in sessions {
                let r = s.result(cores: cores)
                try done(r)
                out.append(r)
            }
        }
        return out
    }

    // MARK: results files

    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys]
        return e
    }
    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    /// The results in DIR/results.jsonl (a line that does not parse is an error naming its line).
    static func load(_ path: String) throws -> [ScalingResult] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var out: [ScalingResult] = []
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            do { out.append(try decoder().decode(ScalingResult.self, from: Data(line.utf8))) } catch {
                throw ValidationFailure("\(path) line \(i + 1) is not a scaling result (\(error)); move the file away to start afresh")
            }
        }
        return out
    }

    static func append(_ r: ScalingResult, directory: String) throws {
        let line = String(decoding: try encoder().encode(r), as: UTF8.self) + "\n"
        try appendText(line, to: directory + "/results.jsonl")
        let csvPath = directory + "/results.csv"
        if !FileManager.default.fileExists(atPath: csvPath) { try appendText(csvColumns.joined(separator: ",") + "\n", to: csvPath) }
        let c = r.configuration
        func ms(_ s: Double) -> String { String(format: "%.3f", s * 1000) }
        let cells = ["\"\(r.key)\"", "\(c.workers)", "\(c.experts)", "\(c.tokens)", "\(c.width)", c.transport, c.wireDType,
                     "\(c.replicas)", "\(r.repeats)", ms(r.stepSeconds), ms(r.medianStepSeconds), ms(r.meanStepSeconds), String(format: "%.1f", r.tokensPerSecond)]
            + ScalingPhase.allCases.map { ms(r.phases[$0] ?? 0) }
            + [ms(r.coordinatorCpuSeconds), ms(r.workerCpuSeconds), "\(r.busyProcesses)", "\(r.cores)", "\(r.oversubscribed)",
               "\(r.bytesSent)", "\(r.bytesReceived)", "\(r.requests)", String(format: "%.4f", r.expertsPerToken),
               String(format: "%.4f", r.imbalance), String(format: "%.2f", r.loadAverage),
               r.waitCompute.map(ms) ?? "", r.waitWire.map(ms) ?? "",
               r.bestStepSeconds.map(ms) ?? "", r.passes.map { "\($0)" } ?? "", r.workerSeconds.map(ms) ?? ""]
        try appendText(cells.joined(separator: ",") + "\n", to: csvPath)
    }

    static func appendText(_ text: String, to path: String) throws {
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { throw ValidationFailure("cannot write \(path)") }
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: Data(text.utf8))
    }

    // MARK: validation of the cost model

    struct Validation {
        var training: [String] = [], heldOut: [String] = []
        /// Predicted step seconds and relative error per held-out key.
        var predicted: [String: Double] = [:], errors: [String: Double] = [:]
        var maxError: Double? { errors.values.max() }
        var model: ScalingCostModel?
    }

    static func observation(_ r: ScalingResult) -> ScalingCostModel.Observation {
        ScalingCostModel.Observation(workload: r.workload, link: .measured(r.configuration.transport), phases: r.phases,
                                     waitCompute: r.workerSeconds ?? r.waitCompute)
    }

    /// Holds out every third configuration (the 2nd, 5th, … in sweep order), fits on the rest,
    /// predicts the held-out ones. Fewer than 3 results: nothing held out.
    static func validate(_ results: [ScalingResult], rates: ComponentRates) throws -> Validation {
        var v = Validation()
        guard results.count >= 3 else { return v }
        let train = results.enumerated().filter { $0.offset % 3 != 1 }.map(\.element)
        let test = results.enumerated().filter { $0.offset % 3 == 1 }.map(\.element)
        let model = try ScalingCostModel.fit(train.map(observation), rates: rates)
        v.model = model
        v.training = train.map(\.key); v.heldOut = test.map(\.key)
        for r in test {
            let p = try model.predictStep(r.workload, link: .measured(r.configuration.transport))
            v.predicted[r.key] = p
            v.errors[r.key] = abs(p - r.stepSeconds) / r.stepSeconds
        }
        return v
    }

    // MARK: plots

    /// Writes the plots into `directory`; returns their paths.
    static func plots(_ results: [ScalingResult], predicted: [String: Double], directory: String) throws -> [String] {
        var paths: [String] = []
        func write(_ name: String, _ svg: String) throws {
            let p = directory + "/" + name
            try svg.write(toFile: p, atomically: true, encoding: .utf8)
            paths.append(p)
        }
        let labels = results.map(\.label)
        // Throughput against workers, one line per group (every setting but the workers), with the ideal.
        let counts = Array(Set(results.map(\.configuration.workers))).sorted()
        var groups: [(String, [ScalingResult])] = []
        for r in results {
            var g = r.configuration; g.workers = 0
            let name = g.label.replacingOccurrences(of: "W0 ", with: "")
            if let i = groups.firstIndex(where: { $0.0 == name }) { groups[i].1.append(r) } else { groups.append((name, [r])) }
        }
        var series: [SVGPlot.Series] = []
        for (k, (name, rs)) in groups.enumerated() {
            let values = counts.map { w in rs.first { $0.configuration.workers == w }.map(\.tokensPerSecond) }
            series.append(SVGPlot.Series(name: name, values: values))
            if k < 3, let base = rs.min(by: { $0.configuration.workers < $1.configuration.workers }) {
                let w0 = Double(base.configuration.workers)
                series.append(SVGPlot.Series(name: "ideal: " + name, values: counts.map { Double($0) >= w0 ? base.tokensPerSecond * Double($0) / w0 : nil }))
            }
        }
        try write("throughput.svg", SVGPlot.lines(title: "Throughput against workers (ideal: linear from the fewest workers)",
                                                  yLabel: "tokens / s", categories: counts.map { "\($0) workers" }, series: series))
        // Stacked phases.
        let phaseSeries = ScalingPhase.allCases.map { p in SVGPlot.Series(name: p.rawValue, values: results.map { ($0.phases[p] ?? 0) * 1000 }) }
        try write("phases.svg", SVGPlot.stackedBars(title: "Step time by phase (best step)", yLabel: "ms per step",
                                                    categories: labels, series: phaseSeries))
        // Expert load heat map.
        let maxWorkers = results.map(\.configuration.workers).max() ?? 1
        let rows = results.flatMap { r in r.load.enumerated().map { l, shares in
            SVGPlot.Series(name: "\(r.label) · layer \(l)", values: (0..<maxWorkers).map { $0 < shares.count ? shares[$0] : nil })
        } }
        try write("expert-load.svg", SVGPlot.heatMap(title: "Share of each MoE layer's routed rows per worker",
                                                     columns: (0..<maxWorkers).map { "w\($0)" }, rows: rows, valueLabel: "share"))
        // Bytes on the wire.
        try write("wire-bytes.svg", SVGPlot.groupedBars(title: "Bytes on the wire per step", yLabel: "MB per step", categories: labels, series: [
            SVGPlot.Series(name: "sent", values: results.map { Double($0.bytesSent) / 1e6 }),
            SVGPlot.Series(name: "received", values: results.map { Double($0.bytesReceived) / 1e6 }),
        ]))
        // Cost model on the held-out configurations.
        if !predicted.isEmpty {
            let held = results.filter { predicted[$0.key] != nil }
            try write("cost-model.svg", SVGPlot.groupedBars(title: "Cost model on held-out configurations", yLabel: "ms per step",
                                                            categories: held.map(\.label), series: [
                SVGPlot.Series(name: "measured", values: held.map { $0.stepSeconds * 1000 }),
                SVGPlot.Series(name: "predicted", values: held.map { predicted[$0.key]! * 1000 }),
            ]))
        }
        return paths
    }
}

/// A failure with a message for the user (exits non-zero with it).
struct ValidationFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The 1-minute load average (the machine may be shared).
func loadAverage1() -> Double {
    var l = [Double](repeating: 0, count: 3)
    return getloadavg(&l, 3) > 0 ? (l[0] * 100).rounded() / 100 : -1
}
