import ArgumentParser
import Foundation
import ThorTensor
import ThorExperts
import ThorModel

/// `thor bench kernels`: GEMM GFLOPS at the FFN's shapes (1 and 2 BLAS threads), the FFN
/// layer's forward+backward against the bound its 6 GEMMs allow, and the dense model's
/// training throughput.
struct BenchKernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "GEMM GFLOPS, FFN forward+backward against its GEMM bound, dense training tokens/s."
    )

    @OptionGroup var output: BenchOutputOptions
    @Option(help: "Tokens (rows) in the FFN / GEMM measurements.")
    var tokens = 4096
    @Option(help: "FFN model width.")
    var modelDim = 512
    @Option(help: "FFN hidden width.")
    var hiddenDim = 2048
    @Option(help: "Training steps timed for the dense model.")
    var trainSteps = 2

    func validate() throws {
        guard tokens > 0, modelDim > 0, hiddenDim > 0, trainSteps > 0, output.repeats > 0 else {
            throw ValidationError("--tokens, --model-dim, --hidden-dim, --train-steps and --repeats must be positive")
        }
    }

    func run() throws {
        let n = tokens, d = modelDim, f = hiddenDim, reps = output.repeats
        var report = BenchReport(title: "thor bench kernels (n=\(n), d=\(d), d_ff=\(f), relu)",
                                 columns: ["threads", "seconds", "gflops"])
        var g = RandomGenerator(seed: 1)
        func filled(_ shape: [Int]) -> Tensor {
            let t = Tensor(shape: shape); g.fillNormal(t.pointer, count: t.count, std: 0.05); return t
        }
        let x = filled([n, d]), w1 = filled([d, f]), b1 = filled([f]), w2 = filled([f, d]), b2 = filled([d])
        let h = filled([n, f]), a = filled([n, f]), y = filled([n, d]), dy = filled([n, d])
        let dx = Tensor(shape: [n, d]), dw1 = Tensor(shape: [d, f]), db1 = Tensor(shape: [f])
        let dw2 = Tensor(shape: [f, d]), db2 = Tensor(shape: [d]), dh = filled([n, f]), da = Tensor(shape: [n, f])

        // The FFN's six GEMMs exactly as FeedForward calls them (name, flops, call).
        let flops = 2.0 * Double(n) * Double(d) * Double(f)
        let gemms: [(String, () -> Void)] = [
            ("fwd x·w1 [\(n)x\(d)]·[\(d)x\(f)]", { gemm(m: n, n: f, k: d, a: x.pointer, b: w1.pointer, beta: 1, c: h.pointer) }),
            ("fwd a·w2", { gemm(m: n, n: d, k: f, a: a.pointer, b: w2.pointer, beta: 1, c: y.pointer) }),
            ("bwd dw2 = aᵀ·dy", { gemm(transA: true, m: f, n: d, k: n, a: a.pointer, b: dy.pointer, beta: 1, c: dw2.pointer) }),
            ("bwd da = dy·w2ᵀ", { gemm(transB: true, m: n, n: f, k: d, a: dy.pointer, b: w2.pointer, c: da.pointer) }),
            ("bwd dw1 = xᵀ·dh [\(d)x\(n)]·[\(n)x\(f)]", { gemm(transA: true, m: d, n: f, k: n, a: x.pointer, b: dh.pointer, beta: 1, c: dw1.pointer) }),
            ("bwd dx = dh·w1ᵀ [\(n)x\(f)]·[\(f)x\(d)]", { gemm(transB: true, m: n, n: d, k: f, a: dh.pointer, b: w1.pointer, c: dx.pointer) }),
        ]
        let saved = BLASThreads.current
        defer { BLASThreads.set(saved) }
        var fractions: [Int: Double] = [:]
        func ffnStep() {
            FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: x.pointer, w1: w1.pointer, b1: b1.pointer,
                                w2: w2.pointer, b2: b2.pointer, n: n, d: d, dFF: f, activation: .relu)
            FeedForward.backward(dx: dx.pointer, dw1: dw1.pointer, db1: db1.pointer, dw2: dw2.pointer, db2: db2.pointer,
                                 dy: dy.pointer, h: h.pointer, a: a.pointer, x: x.pointer, w1: w1.pointer, w2: w2.pointer,
                                 dh: dh.pointer, da: da.pointer, n: n, d: d, dFF: f, activation: .relu)
        }
        for threads in [1, 2] {
            BLASThreads.set(threads)
            var best = [Double](repeating: .infinity, count: gemms.count)
            var boundSeconds = Double.infinity, ffn = Double.infinity
            // Interleaved, best of `repeats` rounds: a busy machine slows both sides alike.
            for (_, call) in gemms { call() }
            ffnStep()
            for _ in 0..<max(1, reps) {
                var sum = 0.0
                for (i, (_, call)) in gemms.enumerated() {
                    let t = bestTime(repeats: 1) { call() }
                    best[i] = min(best[i], t); sum += t
                }
                boundSeconds = min(boundSeconds, sum)
                ffn = min(ffn, bestTime(repeats: 1) { ffnStep() })
            }
            // Per-GEMM bests may come from different rounds; the bound uses their sum when smaller.
            boundSeconds = min(boundSeconds, best.reduce(0, +))
            for (i, (name, _)) in gemms.enumerated() {
                let t = best[i]
                report.addRow(name, ["threads": "\(threads)", "seconds": fmt(t, 5), "gflops": fmt(flops / t / 1e9, 1)])
                if name.hasPrefix("fwd x·w1") { report.set("gemm_gflops_\(threads)t", round1(flops / t / 1e9)) }
                if name.hasPrefix("bwd dw1") { report.set("gemm_gflops_dweight_\(threads)t", round1(flops / t / 1e9)) }
                if name.hasPrefix("bwd dx") { report.set("gemm_gflops_dinput_\(threads)t", round1(flops / t / 1e9)) }
            }
            blackHole(dx[0] + dw1[0] + db1[0] + dw2[0] + db2[0])
            report.addRow("six GEMMs alone", ["threads": "\(threads)", "seconds": fmt(boundSeconds, 5),
                                              "gflops": fmt(6 * flops / boundSeconds / 1e9, 1)])
            report.addRow("FFN forward+backward", ["threads": "\(threads)", "seconds": fmt(ffn, 5),
                                                   "gflops": fmt(6 * flops / ffn / 1e9, 1)])
            fractions[threads] = boundSeconds / ffn
            report.set("ffn_tokens_per_second_\(threads)t", Int(Double(n) / ffn))
            report.set("ffn_gemm_bound_fraction_\(threads)t", round3(boundSeconds / ffn))
        }
        report.set("ffn_gemm_bound_fraction", round3(fractions[saved] ?? fractions[2]!))
        report.set("ffn_gemm_bound_threads", fractions[saved] == nil ? 2 : saved)
        BLASThreads.set(saved)

        // Dense model training throughput on a small configuration.
        let config = TransformerConfiguration(vocabularySize: 8000, modelDim: 256, hiddenDim: 1024, heads: 4,
                                              encoderLayers: 3, decoderLayers: 3, activation: .relu,
                                              dropout: 0.1, attentionDropout: 0.1, maxPositions: 64, padID: 0)
        let model = try Transformer(configuration: config, seed: 1)
        var sources: [[Int32]] = [], targets: [[Int32]] = []
        for _ in 0..<64 {
            sources.append([3] + (0..<(8 + g.nextInt(below: 18))).map { _ in Int32(4 + g.nextInt(below: 7996)) } + [2])
            targets.append([1] + (0..<(8 + g.nextInt(below: 18))).map { _ in Int32(4 + g.nextInt(below: 7996)) } + [2])
        }
        let batch = Seq2SeqBatch(sources: sources, targets: targets, pad: 0)
        let targetTokens = Int(batch.targetMask.reduce(0, +)), sourceTokens = Int(batch.sourceMask.reduce(0, +))
        var step = 0
        let trainSeconds = try bestTime(repeats: max(1, reps - 1)) {
            for _ in 0..<trainSteps {
                step += 1
                try model.forward(batch, training: true)
                try model.backward()
                for p in model.parameters {
                    Adam.update(p, learningRate: 1e-4, clipScale: 1, step: step, settings: AdamSettings())
                }
            }
        } / Double(trainSteps)
        report.addRow("dense train step (d=256, 3+3 layers, V=8000, 64 sentences)",
                      ["threads": "\(saved)", "seconds": fmt(trainSeconds, 4), "gflops": ""])
        report.set("dense_train_target_tokens_per_second", Int(Double(targetTokens) / trainSeconds))
        report.set("dense_train_tokens_per_second", Int(Double(targetTokens + sourceTokens) / trainSeconds))
        report.set("blas_core", BLASCore.loaded)
        try report.emit(json: output.json, csvPath: output.csv)
    }
}

private func fmt(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
private func round1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
private func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
