import ThorTensor
import ThorExperts

/// Runs the same random training steps (forward → backward → squared norms →
/// Adam step) on two expert backends and reports whether every output,
/// input gradient, norm and final weight has the same bits. `thor cluster`
/// uses it as a smoke test of a distributed backend against the in-process one.
public struct BackendComparison {
    public struct Report: Sendable, CustomStringConvertible {
        public var steps: Int
        public var tensorsCompared: Int
        /// Descriptions of every difference (empty: bit-identical).
        public var differences: [String]
        public var identical: Bool { differences.isEmpty }
        public var description: String {
            identical ? "bit-identical over \(steps) steps (\(tensorsCompared) tensors and norms compared)"
                      : "\(differences.count) differences, first: \(differences[0])"
        }
    }

    public var layers: Int
    public var experts: Int
    public var maxRows: Int
    public var seed: UInt64

    public init(layers: Int, experts: Int, maxRows: Int = 9, seed: UInt64 = 7) {
        self.layers = layers; self.experts = experts; self.maxRows = maxRows; self.seed = seed
    }

    /// Random batches for one layer: a random subset of experts (some get no
    /// tokens) in random order, with 1…maxRows rows each.
    public func batches(layer: Int, modelDim: Int, rng: inout RandomGenerator) -> [ExpertBatch] {
        var ids = (0..<experts).filter { _ in rng.nextInt(below: 3) != 0 }
        if ids.isEmpty { ids = [rng.nextInt(below: experts)] }
        ids.shuffle(using: &rng)
        return ids.map { e in
            let t = Tensor(shape: [1 + rng.nextInt(below: maxRows), modelDim])
            rng.fillUniform(t.pointer, count: t.count, limit: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
    }

    public func run(_ a: ExpertBackend, _ b: ExpertBackend, steps: Int) throws -> Report {
        var rng = RandomGenerator(seed: seed)
        var report = Report(steps: steps, tensorsCompared: 0, differences: [])
        let d = a.spec.modelDim
        func compare(_ x: [Tensor], _ y: [Tensor], _ what: String) {
            for (i, (p, q)) in zip(x, y).enumerated() {
                report.tensorsCompared += 1
                if !p.bitwiseEqual(q) { report.differences.append("\(what) tensor \(i)") }
            }
            if x.count != y.count { report.differences.append("\(what): \(x.count) vs \(y.count) tensors") }
        }
        for step in 1...max(1, steps) {
            for layer in 0..<layers {
                let inputs = batches(layer: layer, modelDim: d, rng: &rng)
                let ya = try a.forward(layer: layer, batches: inputs, training: true)
                let yb = try b.forward(layer: layer, batches: inputs, training: true)
                compare(ya, yb, "step \(step) layer \(layer) forward")
                let grads = inputs.map { x -> ExpertBatch in
                    let g = Tensor(shape: x.tokens.shape)
                    rng.fillUniform(g.pointer, count: g.count, limit: 1)
                    return ExpertBatch(expert: x.expert, tokens: g)
                }
                compare(try a.backward(layer: layer, gradients: grads), try b.backward(layer: layer, gradients: grads),
                        "step \(step) layer \(layer) backward")
            }
            let na = try a.squaredGradientNorms(), nb = try b.squaredGradientNorms()
            report.tensorsCompared += 1
            if na != nb { report.differences.append("step \(step) squared gradient norms") }
            let total = na.keys.sorted().reduce(0.0) { $0 + na[$1]! }
            let clip = Adam.clipScale(squaredNorm: total, maxNorm: 1)
            try a.step(learningRate: 1e-2, clipScale: clip, step: step)
            try b.step(learningRate: 1e-2, clipScale: clip, step: step)
        }
        let sa = try a.exportState(), sb = try b.exportState()
        for k in sa.keys.sorted() {
            for name in sa[k]!.keys.sorted() {
                report.tensorsCompared += 1
                guard let t = sb[k]?[name], t.bitwiseEqual(sa[k]![name]!) else {
                    report.differences.append("final state \(name)"); continue
                }
            }
        }
        if Set(sa.keys) != Set(sb.keys) { report.differences.append("final state: different expert sets") }
        return report
    }
}
