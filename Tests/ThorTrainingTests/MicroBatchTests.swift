import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorData
import ThorTraining
import ThorCluster

/// `training.micro_batches` (docs/data-parallel.md, step 1): the shard rule, the whole-batch step
/// unchanged, the C = 2 gradient against the shards' gradients and finite differences of the
/// C = 2 objective, workers against in process, resume, and refused values.
final class MicroBatchTests: XCTestCase {
    func microConfiguration(_ c: Int) -> ThorConfiguration {
        var conf = tinyConfiguration()
        conf.training.microBatches = c
        return conf
    }

    /// Sentence i goes to shard i mod C, in order, each shard padded to its own longest sentence.
    func testShardsTakeEveryCthSentenceAndTheirOwnPadding() {
        let c = SpecialTokens.cls, e = SpecialTokens.eos, b = SpecialTokens.bos
        let batch = Seq2SeqBatch(sources: [[c, 5, e], [c, 6, 7, 8, 9, e], [c, e], [c, 10, 11, e], [c, 12, e]],
                                 targets: [[b, 5, 6, e], [b, 7, e], [b, 8, 9, 10, 11, e], [b, e], [b, 13, e]],
                                 pad: SpecialTokens.pad, taskLabels: [0, 1, 2, 3, 0])
        XCTAssertEqual(MicroBatches.shard(batch, 0, of: 1), batch)
        let s0 = MicroBatches.shard(batch, 0, of: 2), s1 = MicroBatches.shard(batch, 1, of: 2)
        XCTAssertEqual(s0, Seq2SeqBatch(sources: [[c, 5, e], [c, e], [c, 12, e]], targets: [[b, 5, 6, e], [b, 8, 9, 10, 11, e], [b, 13, e]],
                                        pad: SpecialTokens.pad, taskLabels: [0, 2, 0]).withIndices([0, 2, 4]))
        XCTAssertEqual(s1, Seq2SeqBatch(sources: [[c, 6, 7, 8, 9, e], [c, 10, 11, e]], targets: [[b, 7, e], [b, e]],
                                        pad: SpecialTokens.pad, taskLabels: [1, 3]).withIndices([1, 3]))
        let three = (0..<3).map { MicroBatches.shard(batch, $0, of: 3) }
        XCTAssertEqual(three.map(\.indices), [[0, 3], [1, 4], [2]])
        XCTAssertEqual(three.map(\.batchSize).reduce(0, +), 5)
        XCTAssertEqual(three.map(\.targetTokens).reduce(0, +), batch.targetTokens)
        XCTAssertThrowsError(try MicroBatches.split(batch, into: 6, step: 7)) { error in
            let m = "\(error)"
            XCTAssertTrue(m.contains("training.micro_batches") && m.contains("step 7") && m.contains("5 sentences"), m)
        }
    }

    /// With `micro_batches = 1` a step is exactly the whole-batch step as it was written before
    /// micro-batches existed: forward, backward with loss scale 1, the norm, clip, experts' and
    /// coordinator's Adam — the same bits.
    func testOneMicroBatchIsTheWholeBatchStep() throws {
        let c = tinyConfiguration()
        XCTAssertEqual(c.training.microBatches, 1)
        let a = try Setup(c), b = try Setup(c)
        var draw = b.trainer.batches
        for next in 1...3 {
            let r = try a.trainer.trainStep()
            let batch = draw.next()
            let ce = try b.model.network.forward(batch, training: true)
            let total = Double(ce.loss) + b.model.moe.auxiliaryLosses.weighted(by: b.configuration.losses)
            try b.model.network.backward(lossScale: 1)
            var squared = 0.0
            for p in b.model.parameters { squared += Kernels.sumOfSquares(p.grad.pointer, count: p.count) }
            let norms = try b.model.backend.squaredGradientNorms()
            for k in norms.keys.sorted() { squared += norms[k]! }
            let t = b.configuration.training
            let clip = Adam.clipScale(squaredNorm: squared, maxNorm: t.clipNorm)
            let lr = Adam.inverseSquareRootRate(peak: t.learningRate, warmup: t.warmupSteps, step: next)
            try b.model.backend.step(learningRate: lr, clipScale: clip, step: next)
            Adam.update(b.model.parameters, learningRate: lr, clipScale: clip, step: next, settings: t.adam, threads: Parallel.processors)
            XCTAssertEqual(r.loss, total, "step \(next)")
            XCTAssertEqual(r.gradientNorm, squared.squareRoot(), "step \(next)")
        }
        assertBitwiseEqual(try a.snapshot(), try b.snapshot(), "micro_batches = 1 against the whole-batch step")
    }

    /// No dropout (the objective is a plain function of the weights), GELU (no kinks) and heavy
    /// auxiliary weights (their gradients show next to `L_mt`'s).
    func gradientSetup() throws -> Setup {
        var c = microConfiguration(2)
        c.model.architecture = decoderOnly ? .decoderOnly : .encoderDecoder
        c.model.dropout = 0
        c.model.attentionDropout = 0
        c.model.activation = .gelu
        c.losses.alpha = 0.5; c.losses.beta = 0.5; c.losses.gamma = 0.5; c.losses.delta = 0.5
        return try Setup(c)
    }

    /// Five sentence pairs of different lengths and tasks.
    func gradientBatch(tasks: Int) -> Seq2SeqBatch {
        let c = SpecialTokens.cls, e = SpecialTokens.eos, b = SpecialTokens.bos
        return Seq2SeqBatch(sources: [[c, 20, 21, 22, e], [c, 23, e], [c, 24, 25, 26, 27, 28, e], [c, 29, 30, e], [c, 31, 32, 33, e]],
                            targets: [[b, 40, 41, e], [b, 42, 43, 44, 45, e], [b, 46, e], [b, 47, 48, e], [b, 49, 50, 51, 52, e]],
                            pad: SpecialTokens.pad, taskLabels: (0..<5).map { $0 % tasks })
    }

    /// Every gradient (coordinator parameters and experts) by parameter name.
    func gradients(_ s: Setup) -> [String: Tensor] {
        var g: [String: Tensor] = [:]
        for p in s.model.parameters { g[p.name] = Tensor(copying: p.grad) }
        let host = (s.model.backend as! InProcessExpertBackend).host
        try! host.settleGradients()   // the shards' expert gradients summed in shard order
        for k in host.keys { for p in host.experts[k]!.parameters { g[p.name] = Tensor(copying: p.grad) } }
        return g
    }

    /// Every trainable tensor: the coordinator's and the experts'.
    func parameters(_ s: Setup) -> [Parameter] {
        let host = (s.model.backend as! InProcessExpertBackend).host
        return s.model.parameters + host.keys.flatMap { host.experts[$0]!.parameters }
    }

    /// The model of the gradient tests is the decoder-only prefix-LM.
    var decoderOnly = false

    /// Non-pad tokens of `b` an MoE layer sees: the encoder's the source, the decoder's the target,
    /// a prefix-LM's one stack both.
    func tokens(_ b: Seq2SeqBatch, _ l: MoELayer) -> Int {
        let source = Int(b.sourceMask.reduce(0, +))
        return decoderOnly ? source + b.targetTokens : (l.side == .encoder ? source : b.targetTokens)
    }

    /// Sets what shard `shard` of `shards` counts for (as `docs/data-parallel.md` defines it).
    func setShares(_ s: Setup, _ shards: [Seq2SeqBatch], _ shard: Int) {
        for l in s.model.moe.layers {
            let total = shards.reduce(0) { $0 + tokens($1, l) }
            l.microBatchShare = (Float(tokens(shards[shard], l)) / Float(total), 1 / Float(shards.count))
        }
        s.model.moe.taskLevel?.sentenceShare = Float(shards[shard].batchSize) / Float(shards.reduce(0) { $0 + $1.batchSize })
    }

    /// The C-shard objective written out from its definition, by forward passes only: `L_mt`,
    /// `L_task` and `L_dyn` as means over the whole batch's target tokens, sentences and each
    /// layer's tokens; `L_task_lb`, `L_tok_lb` per shard, averaged over the shards. Also every
    /// discrete routing choice of the shards (a nudge that changes one is not differentiable).
    func objective(_ s: Setup, _ shards: [Seq2SeqBatch]) throws -> (loss: Double, routing: [Int]) {
        let w = s.configuration.losses, layers = s.model.moe.layers
        let targets = shards.reduce(0) { $0 + $1.targetTokens }, sentences = shards.reduce(0) { $0 + $1.batchSize }
        var loss = 0.0, routing: [Int] = []
        for shard in shards {
            let ce = try s.model.network.forward(shard, training: true)
            let aux = s.model.moe.auxiliaryLosses
            loss += ce.lossSum / Double(targets)
            loss += Double(w.alpha) * aux.task! * Double(shard.batchSize) / Double(sentences)
            loss += (Double(w.beta) * aux.taskBalance! + Double(w.gamma) * aux.tokenBalance!) / Double(shards.count)
            for l in layers {
                let total = shards.reduce(0) { $0 + tokens($1, l) }
                loss += Double(w.delta) * l.lastLosses.dynamic! * Double(tokens(shard, l)) / Double(total) / Double(layers.count)
            }
            let t = s.model.moe.taskLevel!
            routing += t.predictions + [-3] + t.poolingRows
            for l in layers {
                if let tr = l.lastTaskRouting { for b in 0..<tr.batch { routing += tr.candidateSet(b) } }
                if let d = l.lastDecision { for r in 0..<d.rows { routing += d.selected(r) + [-1] + d.keptExperts(r) + [-2] } }
            }
        }
        return (loss, routing)
    }

    /// C = 2: every gradient is the sum, in shard order, of the shards' gradients each computed
    /// alone (bit for bit), and matches central finite differences of the C = 2 objective; the
    /// step's reported loss is that objective, and its `L_mt` the whole batch's token mean.
    func testTwoMicroBatchGradientIsTheSumOfShardGradientsAndMatchesFiniteDifferences() throws {
        try checkTwoMicroBatchGradient()
    }

    /// The same for the decoder-only prefix-LM (its MoE layers count source and target tokens).
    func testTwoMicroBatchGradientOfThePrefixLM() throws {
        decoderOnly = true
        try checkTwoMicroBatchGradient()
    }

    func checkTwoMicroBatchGradient() throws {
        let s = try gradientSetup()
        XCTAssertEqual(s.model.configuration.model.architecture, decoderOnly ? .decoderOnly : .encoderDecoder)
        let batch = gradientBatch(tasks: s.configuration.routing.tasks)
        let shards = try MicroBatches.split(batch, into: 2, step: 1)
        var rng = RandomGenerator(seed: 5)
        for p in parameters(s) where p.shape.count == 1 { for i in 0..<p.count { p.value[i] += rng.normal() * 0.2 } }

        try s.model.zeroGradients()
        let (mt, aux) = try Trainer.accumulateGradients(s.model, on: batch, microBatches: 2)
        let accumulated = gradients(s)
        try s.model.zeroGradients()
        for l in s.model.moe.layers { XCTAssertTrue(l.microBatchShare == (1, 1), "shares put back") }
        XCTAssertEqual(s.model.moe.taskLevel?.sentenceShare, 1)

        // Each shard alone, from zero gradients, weighted as its part of the objective.
        var parts: [[String: Tensor]] = []
        let targets = Float(batch.targetTokens)
        for c in 0..<2 {
            setShares(s, shards, c)
            try s.model.network.forward(shards[c], training: true)
            try s.model.network.backward(lossScale: Float(shards[c].targetTokens) / targets)
            parts.append(gradients(s))
            try s.model.zeroGradients()
        }
        setShares(s, [batch], 0)
        var differing: [String] = []
        for (name, g) in accumulated {
            let sum = Tensor(copying: parts[0][name]!)
            Kernels.add(parts[1][name]!.pointer, into: sum.pointer, count: sum.count)
            if !g.bitwiseEqual(sum) { differing.append(name) }
        }
        XCTAssertTrue(differing.isEmpty, "gradients not g_0 + g_1: \(differing.sorted().prefix(5))")
        // Both shards reached experts: some expert gradient holds contributions of each.
        let zero: (Tensor) -> Bool = { t in (0..<t.count).allSatisfy { t[$0] == 0 } }
        XCTAssertTrue(accumulated.keys.contains { $0.hasPrefix("moe.") && !zero(parts[0][$0]!) && !zero(parts[1][$0]!) },
                      "an expert gradient with both shards' contributions")

        // The reported loss is the objective; L_mt is the token mean over both shards.
        let (base, baseRouting) = try objective(s, shards)
        XCTAssertEqual(mt + aux.weighted(by: s.configuration.losses), base, accuracy: 1e-9 * abs(base) + 1e-12)
        let whole = try s.model.network.forward(batch, training: true)
        XCTAssertEqual(mt, whole.lossSum / Double(whole.tokenCount), accuracy: 1e-5 * mt)

        // Finite differences of the objective against the accumulated gradient.
        let eps: Float = 5e-3
        var checked = 0, skipped = 0, worst: Float = 0
        for p in parameters(s) {
            let analytic = accumulated[p.name]!
            let stride = max(1, p.count / 3)
            for i in Swift.stride(from: 0, to: p.count, by: stride) {
                let original = p.value[i]
                p.value[i] = original + eps
                let plus = try objective(s, shards)
                p.value[i] = original - eps
                let minus = try objective(s, shards)
                p.value[i] = original
                if plus.routing != baseRouting || minus.routing != baseRouting { skipped += 1; continue }
                let numeric = Float((plus.loss - minus.loss) / Double(2 * eps)), a = analytic[i]
                let err = abs(numeric - a) / max(1e-2, abs(numeric) + abs(a))
                worst = max(worst, err)
                checked += 1
                XCTAssertLessThanOrEqual(err, 3e-2, "\(p.name)[\(i)]: accumulated \(a), numeric \(numeric)")
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 5 * skipped, "too many routing flips (\(skipped) of \(checked + skipped))")
        XCTAssertGreaterThan(checked, 50)
        print("[MicroBatchTests] C = 2 objective (\(decoderOnly ? "prefix-LM" : "encoder-decoder")): \(checked) entries checked (worst relative error \(worst)), \(skipped) skipped (routing flip)")
        try s.model.zeroGradients()
    }

    /// An expert host sums its backward calls' gradients in call order, each computed from zero
    /// (`g = g_0 + g_1`): the bias sums run row by row and the weight-gradient GEMMs reduce over
    /// all of a call's rows (1500 and 1300 here, more than a 256-row chunk), so adding a call's rows
    /// into a non-zero gradient would change bits; after a step or zeroing, a call computes straight
    /// into the gradient (the whole-batch bits).
    func testExpertHostSumsBackwardCallsInCallOrder() throws {
        let spec = ExpertSpec(modelDim: 16, hiddenDim: 48, activation: .gelu, seed: 3)
        let key = ExpertKey(layer: 0, expert: 0)
        let calls = [randomBatch(rows: 1500, seed: 1), randomBatch(rows: 1300, seed: 2)]
        let grads = [randomBatch(rows: 1500, seed: 3), randomBatch(rows: 1300, seed: 4)]
        func run(_ host: ExpertHost, _ i: Int) throws -> Tensor {
            _ = try host.forward(layer: 0, batches: [ExpertBatch(expert: 0, tokens: calls[i])], training: true)
            return try host.backward(layer: 0, gradients: [ExpertBatch(expert: 0, tokens: grads[i])])[0]
        }
        func gradient(_ host: ExpertHost) -> [Tensor] { host.experts[key]!.parameters.map { Tensor(copying: $0.grad) } }
        let alone = try (0..<2).map { i -> ([Tensor], Tensor) in
            let h = ExpertHost(spec: spec, keys: [key], threads: 2)
            let dx = try run(h, i)
            return (gradient(h), dx)
        }
        let host = ExpertHost(spec: spec, keys: [key], threads: 2)
        let dx0 = try run(host, 0), dx1 = try run(host, 1)
        XCTAssertTrue(dx0.bitwiseEqual(alone[0].1) && dx1.bitwiseEqual(alone[1].1), "∂x does not depend on earlier calls")
        for (j, g) in gradient(host).enumerated() {
            let sum = Tensor(copying: alone[0].0[j])
            Kernels.add(alone[1].0[j].pointer, into: sum.pointer, count: sum.count)
            XCTAssertTrue(g.bitwiseEqual(sum), "parameter \(j): not g_0 + g_1")
        }
        host.zeroGradients()
        _ = try run(host, 0)
        for (j, g) in gradient(host).enumerated() { XCTAssertTrue(g.bitwiseEqual(alone[0].0[j]), "parameter \(j) after zeroing") }
    }

    func randomBatch(rows: Int, seed: UInt64) -> Tensor {
        let t = Tensor(shape: [rows, 16])
        var g = RandomGenerator(seed: seed)
        g.fillNormal(t.pointer, count: t.count, std: 1)
        return t
    }

    /// C = 2 on 2 workers: the same losses and the same bits (weights, moments) as C = 2 in process.
    func testTwoMicroBatchesOnTwoWorkersMatchInProcessBitForBit() throws {
        let c = microConfiguration(2)
        let reference = try Setup(c)
        let expected = try (0..<3).map { _ in try reference.trainer.trainStep().loss }
        let s = try Setup(c, workers: 2)
        defer { s.runtime.shutdown() }
        XCTAssertNotNil(s.runtime.remote)
        let losses = try (0..<3).map { _ in try s.trainer.trainStep().loss }
        XCTAssertEqual(losses, expected)
        assertBitwiseEqual(try reference.snapshot(), try s.snapshot(), "micro_batches = 2 on 2 workers")
        // And C = 2 is a different computation from C = 1 (the shards' sums), not a no-op.
        let one = try Setup(tinyConfiguration())
        for _ in 0..<3 { try one.trainer.trainStep() }
        XCTAssertFalse(try one.snapshot()["embedding.weight"]!.bitwiseEqual(try s.snapshot()["embedding.weight"]!))
    }

    /// Step 2 (docs/data-parallel.md): every shard's Forward and Backward carry its shard and the
    /// workers sum the shards' gradients in shard order: C = 2 and 3 micro-batches over 1 and 2
    /// workers give the losses and bits of the same C in process.
    func testMicroBatchesOnOneAndTwoWorkersMatchInProcessBitForBit() throws {
        for (c, workers) in [(2, 1), (3, 1), (3, 2)] {
            let conf = microConfiguration(c)
            let reference = try Setup(conf)
            let expected = try (0..<3).map { _ in try reference.trainer.trainStep().loss }
            let s = try Setup(conf, workers: workers)
            defer { s.runtime.shutdown() }
            XCTAssertNotNil(s.runtime.remote)
            XCTAssertEqual(try (0..<3).map { _ in try s.trainer.trainStep().loss }, expected, "C = \(c), \(workers) workers")
            assertBitwiseEqual(try reference.snapshot(), try s.snapshot(), "micro_batches = \(c) on \(workers) workers")
            XCTAssertEqual(s.runtime.remote!.coordinator.shard, .whole, "the whole batch again after each step")
        }
    }

    /// The Trainer names each shard to the expert backend for that shard's passes (C > 1), and puts
    /// the whole batch back after the step's shards.
    func testEveryShardsExpertCallsCarryItsShard() throws {
        final class Recording: ExpertBackend {
            let inner: InProcessExpertBackend
            var calls: [(backward: Bool, shard: Shard)] = []
            init(_ inner: InProcessExpertBackend) { self.inner = inner }
            var spec: ExpertSpec { inner.spec }
            var shard: Shard { get { inner.shard } set { inner.shard = newValue } }
            func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
                calls.append((false, shard)); return try inner.forward(layer: layer, batches: batches, training: training)
            }
            func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
                calls.append((true, shard)); return try inner.backward(layer: layer, gradients: gradients)
            }
            func squaredGradientNorms() throws -> [ExpertKey: Double] { try inner.squaredGradientNorms() }
            func step(learningRate: Float, clipScale: Float, step: Int) throws { try inner.step(learningRate: learningRate, clipScale: clipScale, step: step) }
            func zeroGradients() throws { try inner.zeroGradients() }
            func exportState() throws -> [ExpertKey: [String: Tensor]] { try inner.exportState() }
            func importState(_ state: [ExpertKey: [String: Tensor]]) throws { try inner.importState(state) }
        }
        let s = try Setup(microConfiguration(3))
        let inner = s.model.backend as! InProcessExpertBackend
        let recording = Recording(InProcessExpertBackend(spec: inner.spec, keys: inner.host.keys))
        let model = try TranslationModel(configuration: s.configuration, backend: recording)
        _ = try Trainer.accumulateGradients(model, on: gradientBatch(tasks: s.configuration.routing.tasks), microBatches: 3)
        let layers = model.moe.layers.count
        XCTAssertEqual(recording.calls.map(\.shard), (0..<3).flatMap { c in Array(repeating: Shard(index: c, count: 3), count: 2 * layers) })
        XCTAssertEqual(recording.calls.filter(\.backward).count, 3 * layers)
        XCTAssertEqual(recording.shard, .whole)
        try model.zeroGradients()   // a step's requests share one shard count: drop the C = 3 step first
        _ = try Trainer.accumulateGradients(model, on: gradientBatch(tasks: s.configuration.routing.tasks), microBatches: 1)
        XCTAssertEqual(recording.calls.suffix(2 * layers).map(\.shard), Array(repeating: .whole, count: 2 * layers))
    }

    /// A C = 2 run saved at step 2 and resumed gives the uninterrupted run's bits.
    func testResumedMicroBatchRunEqualsUninterrupted() throws {
        let c = microConfiguration(2)
        let a = try Setup(c)
        for _ in 0..<2 { try a.trainer.trainStep() }
        let dir = NSTemporaryDirectory() + "thor-microbatch-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try a.trainer.saveCheckpoint(to: dir)
        let lossesA = try (0..<2).map { _ in try a.trainer.trainStep().loss }
        let ck = try RunCheckpoint(directory: dir)
        XCTAssertEqual(ck.configuration.training.microBatches, 2)
        let b = try Setup(ck.configuration, checkpoint: ck)
        let lossesB = try (0..<2).map { _ in try b.trainer.trainStep().loss }
        XCTAssertEqual(lossesA, lossesB)
        assertBitwiseEqual(try a.snapshot(), try b.snapshot(), "resumed micro-batch run")
    }

    /// 0, negative and non-integer values are refused naming the key; more micro-batches than a
    /// batch has sentences stops the step naming the key, with nothing changed.
    func testBadMicroBatchCountsAreRefusedNamingTheKey() throws {
        for bad in ["0", "-2", "1.5", "\"two\"", "5000"] {
            XCTAssertThrowsError(try tinyConfiguration().applying(overrides: ["training.micro_batches": bad]), bad) { error in
                XCTAssertTrue("\(error)".contains("training.micro_batches"), "\(bad): \(error)")
            }
        }
        XCTAssertEqual(try tinyConfiguration().applying(overrides: ["training.micro_batches": "3"]).training.microBatches, 3)
        let s = try Setup(microConfiguration(4000))
        let before = try s.snapshot(), position = s.trainer.batches.position
        XCTAssertThrowsError(try s.trainer.trainStep()) { error in
            let m = "\(error)"
            XCTAssertTrue(m.contains("training.micro_batches = 4000") && m.contains("step 1"), m)
        }
        XCTAssertEqual(s.trainer.batches.position, position)
        XCTAssertEqual(s.trainer.step, 0)
        assertBitwiseEqual(before, try s.snapshot(), "refused step")
    }
}

extension Seq2SeqBatch {
    func withIndices(_ i: [Int]) -> Seq2SeqBatch { var b = self; b.indices = i; return b }
}
