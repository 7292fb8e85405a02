import ArgumentParser
import Foundation
import ThorTraining

/// `thor experiment predict`: the cost model's step time and phases for a cluster bigger than this machine.
struct ExperimentPredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Predict the step time and its phases for W workers on N nodes over a given link, and name the bottleneck.",
        discussion: """
        Uses the cost model a `thor experiment scaling` sweep fitted (--model, default \
        runs/scaling/cost-model.json): this machine's component rates with the fitted per-phase \
        coefficients. Without that file, or for a width or expert count it lacks, the missing \
        rates are measured now (a few seconds) and the coefficients are 1 (pure micro-benchmark \
        prediction). The step is the sweep's: self-attention, the task level and 2 THOR top-p \
        MoE layers with backward, the experts' norms and Adam, on one coordinator (one core). \
        Workers are spread evenly over --nodes; the coordinator's node reaches its own workers \
        over ipc, the others over --link (BANDWIDTH,LATENCY, e.g. 100gbit,5us or 25gbyte,2us). \
        --experts-per-token and --imbalance (busiest worker's rows over the mean) default to the \
        sweep's mean figures (1.5 and 1.2 without a sweep).
        """
    )

    @Option(help: "Expert workers W.") var workers: Int
    @Option(help: "Nodes the workers spread over.") var nodes = 1
    @Option(help: "Link between nodes: BANDWIDTH,LATENCY (gbit, mbit, gbyte, mbyte; s, ms, us, ns).") var link = "100gbit,5us"
    @Option(help: "Experts per MoE layer (default: the workers, at least 8).") var experts: Int?
    @Option(help: "Tokens per batch.") var tokens = 4096
    @Option(help: "Model width d (d_ff = 4d).") var width = 512
    @Option(help: "Replicas of every expert.") var replicas = 1
    @Option(name: .customLong("wire-dtype"), help: "Tensor dtype on the wire: f32 or bf16.") var wireDType = "f32"
    @Option(help: "Cores per node for the workers (default: one per worker).") var coresPerNode: Int?
    @Option(help: "Kept experts per token.") var expertsPerToken: Double?
    @Option(help: "Busiest worker's rows over the mean worker's.") var imbalance: Double?
    @Option(help: "cost-model.json of a scaling sweep.") var model = "runs/scaling/cost-model.json"
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func validate() throws {
        guard workers >= 1, nodes >= 1, nodes <= workers else { throw ValidationError("--workers must be ≥ 1 and --nodes between 1 and the workers, got \(workers) and \(nodes)") }
        guard tokens >= ScalingConfiguration.length, width >= 4, width % ScalingConfiguration.heads == 0 else {
            throw ValidationError("--tokens must be ≥ \(ScalingConfiguration.length) and --width a multiple of \(ScalingConfiguration.heads)")
        }
        if let experts, experts < 2 { throw ValidationError("--experts needs ≥ 2, got \(experts)") }
        guard replicas >= 1, replicas <= workers else { throw ValidationError("--replicas must be between 1 and the workers, got \(replicas)") }
        guard ["f32", "bf16"].contains(wireDType) else { throw ValidationError("--wire-dtype must be f32 or bf16, got \(wireDType)") }
        if let e = expertsPerToken, !(e > 0) { throw ValidationError("--experts-per-token must be > 0") }
        if let i = imbalance, !(i >= 1) { throw ValidationError("--imbalance must be ≥ 1 (busiest over mean)") }
        if let c = coresPerNode, c < 1 { throw ValidationError("--cores-per-node must be ≥ 1") }
        do { _ = try LinkModel.parse(link) } catch { throw ValidationError("--link: \(error)") }
    }

    func run() throws {
        let linkRate = try LinkModel.parse(link)
        let n = experts ?? max(8, workers)
        var fitted: ScalingCostModel? = nil
        if let data = FileManager.default.contents(atPath: model) {
            do { fitted = try JSONDecoder().decode(ScalingCostModel.self, from: data) } catch {
                throw ValidationFailure("--model \(model) is not a cost model written by `thor experiment scaling` (\(error))")
            }
        }
        var sweepStats: (e: Double, imbalance: Double)? = nil
        let resultsPath = (model as NSString).deletingLastPathComponent + "/results.jsonl"
        if fitted != nil, let results = try? ScalingSweep.load(resultsPath), !results.isEmpty {
            sweepStats = (results.map(\.expertsPerToken).reduce(0, +) / Double(results.count),
                          results.map(\.imbalance).reduce(0, +) / Double(results.count))
        }
        let c = ScalingConfiguration(workers: 1, experts: n, tokens: tokens, width: width, transport: "ipc", wireDType: wireDType, replicas: 1)
        let info: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        let rates = try ScalingRateProbe.complete(fitted?.rates, for: [c], info: info)
        var costModel = fitted ?? ScalingCostModel(rates: rates)
        costModel.rates = rates
        if fitted == nil { info("no cost model at \(model): coefficients 1 (run `thor experiment scaling` to fit them)") }
        let perNode = (workers + nodes - 1) / nodes
        let workload = ScalingWorkload(tokens: c.batchTokens, length: ScalingConfiguration.length, modelDim: width, hiddenDim: 4 * width,
                                       experts: n, moeLayers: ScalingConfiguration.moeLayers, workers: workers, replicas: replicas,
                                       nodes: nodes, coresPerNode: coresPerNode ?? perNode, wireBytesPerElement: c.wireBytesPerElement,
                                       expertsPerToken: expertsPerToken ?? sweepStats?.e ?? 1.5,
                                       imbalance: imbalance ?? sweepStats?.imbalance ?? 1.2)
        let phases = try costModel.predict(workload, link: .given(linkRate))
        let features = try costModel.features(workload, link: .given(linkRate))
        let total = phases.values.reduce(0, +)
        let bottleneck = ScalingBottleneck.of(phases: phases, features: features, coefficients: costModel.coefficients)
        if json {
            var obj: [String: Any] = ["workers": workers, "nodes": nodes, "experts": n, "tokens": c.batchTokens, "width": width,
                                      "link_bandwidth_bytes_per_s": linkRate.bandwidth, "link_latency_s": linkRate.latency,
                                      "experts_per_token": workload.expertsPerToken, "imbalance": workload.imbalance,
                                      "step_seconds": total, "tokens_per_second": Double(c.batchTokens) / total,
                                      "bottleneck": bottleneck.name, "bottleneck_share": bottleneck.share,
                                      "fitted": fitted != nil]
            obj["phases"] = Dictionary(uniqueKeysWithValues: ScalingPhase.allCases.map { ($0.rawValue, phases[$0] ?? 0) })
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("predicted step: \(workers) workers on \(nodes) node(s), link \(link), N=\(n) experts per layer, n=\(c.batchTokens) tokens, d=\(width), d_ff=\(4 * width)")
        print(String(format: "experts per token %.2f, imbalance %.2f, %@ coefficients", workload.expertsPerToken, workload.imbalance,
                     fitted != nil ? "fitted" : "unit"))
        for p in ScalingPhase.allCases {
            let s = phases[p] ?? 0
            print(p.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)
                  + String(format: "%10.3f ms  %5.1f%%", s * 1000, 100 * s / max(total, 1e-30)))
        }
        print(String(format: "step      %10.3f ms  (%.0f tokens/s)", total * 1000, Double(c.batchTokens) / total))
        print(String(format: "bottleneck: %@ (%.0f%% of the step): %@", bottleneck.name, 100 * bottleneck.share, bottleneck.explanation))
    }
}
