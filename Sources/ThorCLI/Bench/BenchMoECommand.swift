import Foundation
import ArgumentParser
import ThorTensor
import ThorExperts
import ThorModel

struct BenchMoECommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe",
        abstract: "Plain top-2 against THOR top-2 and THOR top-p layer throughput.",
        discussion: """
        Forward + backward of one encoder MoE layer (the first, so THOR variants include the \
        task predictor) with experts in process. Goal: thor_top2_tokens_per_s ≥ 0.9 × top2_tokens_per_s.

        GEMM bound: the six expert GEMMs at [tokens × d]·[d × d_ff] (forward, and the two \
        backward products of each) with 2 BLAS threads, timed in the same rounds, give the \
        sgemm rate (gemm_gflops_2t); a case's bound is the expert FLOPs it actually ran \
        (kept token-expert assignments × 6 GEMMs) at that rate. gemm_bound_tokens_per_s is \
        top-2's bound (2 experts per token); top2_over_gemm_bound and thor_topp_over_gemm_bound \
        are each case's tokens/s over its own bound (goals ≥ 0.85 and ≥ 0.8).
        """
    )

    @OptionGroup var output: BenchOutputOptions
    @OptionGroup var shape: MoELayerBenchOptions
    @Option(help: "Threads computing experts (InProcessExpertBackend).") var threads = 2

    func run() throws {
        let tokens = shape.tokens, experts = shape.experts, tasks = shape.tasks
        var report = BenchReport(
            title: "MoE layer forward+backward: d=\(shape.modelDim) d_ff=\(shape.hiddenDim) N=\(experts) K=\(experts / 2), \(shape.sentences)×\(shape.length) = \(tokens) tokens, expert threads=\(threads)",
            columns: ["ms", "tokens/s", "experts/token", "busiest expert", "routing ms", "vs top2", "over GEMM bound"])
        let (x, dy, layout) = shape.inputs(), model = shape.model
        let cases: [(label: String, key: String?, routing: RoutingConfiguration)] = [
            ("top2 (GShard)", "top2", RoutingConfiguration(variant: .top2, experts: experts, moeEvery: 1, tasks: tasks)),
            ("THOR top-k k=2", "thor_top2", RoutingConfiguration(variant: .thorTopK, experts: experts, k: 2, moeEvery: 1, tasks: tasks)),
            ("THOR top-p p=0.5", "thor_topp", RoutingConfiguration(variant: .thorTopP, experts: experts, threshold: 0.5, moeEvery: 1, tasks: tasks)),
        ]
        // Build every case first, then interleave the timed runs (round-robin, best per case),
        // so that load from other processes affects the cases alike.
        var layers: [FirstMoELayer] = [], backends: [InProcessExpertBackend] = []
        for c in cases {
            let keys = MoEStack.expertKeys(model: model, routing: c.routing).filter { $0.layer == 0 }
            let backend = InProcessExpertBackend(spec: MoEStack.expertSpec(model: model, seed: 1), keys: keys, threads: threads)
            let stack = try MoEStack(model: model, routing: c.routing, losses: LossConfiguration(), backend: backend, seed: 1)
            layers.append(FirstMoELayer(stack)); backends.append(backend)
        }
        // Coordinator-side cost alone: the same layers' routing with experts that return zeros at once.
        var routingBest = [Double](repeating: .infinity, count: cases.count)
        for (i, c) in cases.enumerated() {
            let null = NullExpertBackend(spec: MoEStack.expertSpec(model: model, seed: 1))
            let first = FirstMoELayer(try MoEStack(model: model, routing: c.routing, losses: LossConfiguration(), backend: null, seed: 1))
            routingBest[i] = try bestTime(repeats: max(3, output.repeats)) {
                let y = try first.forward(x, layout: layout, training: true)
                blackHole((y, try first.backward(dy)))
            }
        }
        var best = [Double](repeating: .infinity, count: cases.count)
        var timed = [[Double]](repeating: [], count: cases.count)  // every timed repetition, in order
        let sgemm = ExpertGEMMRate(rows: tokens, modelDim: shape.modelDim, hiddenDim: shape.hiddenDim)
        var sgemmBest = Double.infinity
        for round in 0...max(1, output.repeats) {
            let t = sgemm.time(threads: 2)
            if round > 0 { sgemmBest = min(sgemmBest, t) }
            for (i, layer) in layers.enumerated() {
                let t = try timeOnce {
                    let y = try layer.forward(x, layout: layout, training: true)
                    let dx = try layer.backward(dy)
                    blackHole((y, dx))
                }
                try backends[i].zeroGradients()
                if round > 0 { best[i] = min(best[i], t); timed[i].append(t) }   // round 0 warms up
            }
        }
        var top2Rate = 0.0
        let gflops = sgemm.flops / sgemmBest / 1e9
        report.set("gemm_gflops_2t", (gflops * 10).rounded() / 10)
        for (i, c) in cases.enumerated() {
            let seconds = best[i]
            let dec = layers[i].layer.lastDecision!
            let perToken = Double(dec.keptAssignments) / Double(tokens)
            var load = [Int](repeating: 0, count: experts)
            for t in 0..<dec.rows { for e in dec.keptExperts(t) { load[e] += 1 } }
            let busiest = Double(load.max() ?? 0) / Double(max(1, dec.keptAssignments))
            let rate = Double(tokens) / seconds
            if c.key == "top2" { top2Rate = rate }
            // The expert FLOPs this case ran (every kept assignment through forward and backward).
            let f1 = model.activation.firstProjectionWidth(dFF: shape.hiddenDim)
            let rowFlops = 3.0 * 2 * Double(shape.modelDim) * Double(f1 + shape.hiddenDim)
            let boundRate = Double(tokens) / (Double(dec.keptAssignments) * rowFlops / (gflops * 1e9))
            report.addRow(c.label, ["ms": String(format: "%.1f", seconds * 1000), "tokens/s": String(format: "%.0f", rate),
                                    "experts/token": String(format: "%.3f", perToken),
                                    "busiest expert": String(format: "%.1f%%", busiest * 100),
                                    "routing ms": String(format: "%.1f", routingBest[i] * 1000),
                                    "vs top2": String(format: "%.3f", rate / top2Rate),
                                    "over GEMM bound": String(format: "%.3f", rate / boundRate)])
            if let key = c.key {
                report.set("\(key)_tokens_per_s", (rate * 10).rounded() / 10)
                report.setRepetitions(key + "_ms", seconds: timed[i])
                report.set("\(key)_experts_per_token", (perToken * 1000).rounded() / 1000)
                report.set("\(key)_routing_ms", (routingBest[i] * 10000).rounded() / 10)
                report.set("\(key)_gemm_bound_tokens_per_s", (boundRate * 10).rounded() / 10)
                report.set("\(key)_over_gemm_bound", (rate / boundRate * 1000).rounded() / 1000)
                if key == "top2" { report.set("gemm_bound_tokens_per_s", (boundRate * 10).rounded() / 10) }
            }
        }
        if let thor = report.fields.first(where: { $0.0 == "thor_top2_tokens_per_s" })?.1 as? Double {
            let ratio = thor / top2Rate
            report.set("thor_top2_over_top2", (ratio * 1000).rounded() / 1000)
            report.set("goal_thor_top2_ge_0.9_top2", ratio >= 0.9)
        }
        try report.emit(json: output.json, csvPath: output.csv)
    }
}

/// Wall-clock seconds of one run of `body`.
private func timeOnce(_ body: () throws -> Void) rethrows -> Double {
    let t0 = now()
    try body()
    return now() - t0
}

/// Experts that cost nothing (zeros of the right shape): isolates the MoE layer's own cost.
private final class NullExpertBackend: ExpertBackend {
    let spec: ExpertSpec
    var shard: Shard = .whole
    init(spec: ExpertSpec) { self.spec = spec }
    func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        batches.map { Tensor(shape: $0.tokens.shape) }
    }
    func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] { gradients.map { Tensor(shape: $0.tokens.shape) } }
    func squaredGradientNorms() throws -> [ExpertKey: Double] { [:] }
    func step(learningRate: Float, clipScale: Float, step: Int) throws {}
    func zeroGradients() throws {}
    func exportState() throws -> [ExpertKey: [String: Tensor]] { [:] }
    func importState(_ state: [ExpertKey: [String: Tensor]]) throws {}
}

/// The six GEMMs of an FFN (expert) forward + backward at one shape, for the sgemm rate a
/// MoE layer's experts could reach.
private struct ExpertGEMMRate {
    let n: Int, d: Int, f: Int
    let x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, y: Tensor, dy: Tensor
    let dw1: Tensor, dw2: Tensor, dx: Tensor

    init(rows: Int, modelDim: Int, hiddenDim: Int) {
        n = rows; d = modelDim; f = hiddenDim
        var g = RandomGenerator(seed: 11)
        func filled(_ shape: [Int]) -> Tensor {
            let t = Tensor(shape: shape); g.fillNormal(t.pointer, count: t.count, std: 0.05); return t
        }
        x = filled([n, d]); w1 = filled([d, f]); w2 = filled([f, d]); h = filled([n, f]); y = filled([n, d])
        dy = filled([n, d]); dw1 = Tensor(shape: [d, f]); dw2 = Tensor(shape: [f, d]); dx = Tensor(shape: [n, d])
    }

    var flops: Double { 6 * 2 * Double(n) * Double(d) * Double(f) }

    /// Seconds for the six GEMMs with `threads` BLAS threads (restores the caller's count).
    func time(threads: Int) -> Double {
        let saved = BLASThreads.current
        BLASThreads.set(threads)
        defer { BLASThreads.set(saved) }
        let t0 = now()
        gemm(m: n, n: f, k: d, a: x.pointer, b: w1.pointer, c: h.pointer)
        gemm(m: n, n: d, k: f, a: h.pointer, b: w2.pointer, c: y.pointer)
        gemm(transA: true, m: f, n: d, k: n, a: h.pointer, b: dy.pointer, beta: 1, c: dw2.pointer)
        gemm(transB: true, m: n, n: f, k: d, a: dy.pointer, b: w2.pointer, c: h.pointer)
        gemm(transA: true, m: d, n: f, k: n, a: x.pointer, b: h.pointer, beta: 1, c: dw1.pointer)
        gemm(transB: true, m: n, n: d, k: f, a: h.pointer, b: w1.pointer, c: dx.pointer)
        let t = now() - t0
        blackHole(dx[0] + dw1[0] + dw2[0] + y[0])
        return t
    }
}
