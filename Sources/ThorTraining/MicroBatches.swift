import ThorTensor
import ThorModel
import ThorExperts

/// Gradient accumulation over micro-batches (`training.micro_batches = C`, docs/data-parallel.md):
/// the reference a run with C data-parallel coordinators must equal bit for bit.
///
/// The step's batch is split by a fixed rule — sentence `i` of the sampled order goes to shard
/// `i mod C` — into C batches of their own (each padded to its own longest sentence). Each shard
/// runs forward and backward alone; every parameter's gradient (coordinator and expert) is the
/// sum of the shards' gradients **in shard order**, `g = g_0; g += g_1; …; g += g_{C−1}`, each
/// `g_c` computed as if its shard were the only one. Then one gradient norm, clip and Adam step.
///
/// The objective is the whole batch's: `L_mt`, `L_task` and `L_dyn` are means over the whole
/// batch's tokens (sentences), so a shard's part is weighted by its share of them (`N_c / N`),
/// and C = 2 is the C = 1 objective up to float rounding. The balance losses `L_task_lb` and
/// `L_tok_lb` are products of batch means, not sums over tokens: each shard computes them over its
/// own sentences, and the step's value is their mean over the C shards (weight 1/C each).
public enum MicroBatches {
    /// Shard `index` of `count`: sentences `index, index + count, …` of `batch` in order, padded to
    /// the longest of them. With `count` 1, `batch` itself.
    public static func shard(_ batch: Seq2SeqBatch, _ index: Int, of count: Int) -> Seq2SeqBatch {
        precondition(count >= 1 && index >= 0 && index < count, "shard \(index) of \(count)")
        if count == 1 { return batch }
        let rows = Array(stride(from: index, to: batch.batchSize, by: count))
        let sl = batch.sourceLength, tl = batch.targetLength
        func length(_ mask: [Float], _ row: Int, _ width: Int) -> Int {
            var n = 0
            for j in 0..<width where mask[row * width + j] != 0 { n = j + 1 }
            return n
        }
        let s = rows.map { length(batch.sourceMask, $0, sl) }.max() ?? 0
        let t = rows.map { length(batch.targetMask, $0, tl) }.max() ?? 0
        var source: [Int32] = [], sourceMask: [Float] = [], targetInput: [Int32] = [], targetOutput: [Int32] = []
        var targetMask: [Float] = []
        for r in rows {
            source += batch.source[r * sl ..< r * sl + s]
            sourceMask += batch.sourceMask[r * sl ..< r * sl + s]
            targetInput += batch.targetInput[r * tl ..< r * tl + t]
            targetOutput += batch.targetOutput[r * tl ..< r * tl + t]
            targetMask += batch.targetMask[r * tl ..< r * tl + t]
        }
        return Seq2SeqBatch(batchSize: rows.count, sourceLength: s, targetLength: t, source: source,
                            sourceMask: sourceMask, targetInput: targetInput, targetOutput: targetOutput,
                            targetMask: targetMask, taskLabels: batch.taskLabels.map { l in rows.map { l[$0] } },
                            indices: rows.map { batch.indices[$0] })
    }

    /// The C shards of `batch`, in shard order; refuses a batch with fewer sentences than shards.
    public static func split(_ batch: Seq2SeqBatch, into count: Int, step: Int) throws -> [Seq2SeqBatch] {
        try check(batch, count: count, step: step)
        return (0..<count).map { shard(batch, $0, of: count) }
    }

    /// Refuses `count` shards for a batch of fewer sentences, naming the key.
    public static func check(_ batch: Seq2SeqBatch, count: Int, step: Int) throws {
        guard count >= 1, count <= batch.batchSize else {
            throw TrainingError.invalidConfiguration(
                "training.micro_batches = \(count), but the batch of step \(step) has \(batch.batchSize) sentences "
                    + "(every micro-batch needs one): lower training.micro_batches or raise training.max_tokens_per_batch")
        }
    }
}

extension Trainer {
    /// Forward and backward of `batch` in `microBatches` shards (`MicroBatches`), their gradients
    /// summed in shard order into every coordinator parameter's `grad` and every expert's gradient;
    /// no optimizer step. Returns the step's `L_mt` and auxiliary losses. What a step with
    /// `training.micro_batches > 1` runs before its gradient norm (`step` names the step in errors).
    public static func accumulateGradients(_ model: TranslationModel, on batch: Seq2SeqBatch, microBatches: Int,
                                           step: Int = 1, phases: PhaseTimer = PhaseTimer()) throws
        -> (translationLoss: Double, auxiliary: AuxiliaryLosses) {
        try accumulate(model, shards: try MicroBatches.split(batch, into: microBatches, step: step), step: step, phases: phases)
    }

    /// Forward and backward of `shards` in order, each into gradients of its own, summed in shard
    /// order into every parameter's `grad` (the experts' hosts keep each shard's gradient apart and
    /// sum them the same way, in shard order, see `ExpertHost.settleGradients`). Returns the step's `L_mt` (token mean over every shard) and
    /// auxiliary losses (see `MicroBatches`). A non-finite loss stops before that shard's
    /// backward, with every gradient dropped.
    static func accumulate(_ model: TranslationModel, shards: [Seq2SeqBatch], step next: Int,
                           phases: PhaseTimer) throws -> (translationLoss: Double, auxiliary: AuxiliaryLosses) {
        let count = shards.count
        let parameters = model.parameters
        let totals = ShardTotals(model, shards: shards)
        let dropout = model.network.dropoutState
        var sums: [Tensor] = []
        var outcomes: [ShardOutcome] = []
        for c in shards.indices {
            outcomes.append(try runShard(model, shards[c], index: c, totals: totals, dropoutAtStepStart: dropout,
                                         step: next, phases: phases))
            // g = g_0; g += g_c: the running sum waits in `sums` while the next shard's gradient
            // is computed from zero in `grad`; the last shard's is added to it in place.
            if count > 1 {
                if c == 0 {
                    sums = parameters.map { Tensor(copying: $0.grad) }
                } else if c < count - 1 {
                    for (p, s) in zip(parameters, sums) { Kernels.add(p.grad.pointer, into: s.pointer, count: p.count) }
                } else {
                    for (p, s) in zip(parameters, sums) { Kernels.add(s.pointer, into: p.grad.pointer, count: p.count) }
                }
                if c < count - 1 { model.network.zeroGradients() }
            }
        }
        if count > 1 { model.network.dropoutState = ShardTotals.dropoutState(after: count, from: dropout) }
        return ShardOutcome.combine(outcomes, totals: totals)
    }

    /// Forward and backward of shard `c` of a step's `totals.count` shards, from zero gradients, weighted
    /// by the whole batch's totals (`MicroBatches`), with the shard's own dropout stream (see
    /// `ShardTotals.dropoutState`). What each data-parallel coordinator runs for its shard, and the
    /// in-process micro-batch step for each of its shards: the same code, the same bits.
    static func runShard(_ model: TranslationModel, _ shard: Seq2SeqBatch, index c: Int, totals: ShardTotals,
                         dropoutAtStepStart: UInt64, step next: Int, phases: PhaseTimer) throws -> ShardOutcome {
        let count = totals.count
        let layers = model.moe.layers, taskLevel = model.moe.taskLevel
        let backend = model.backend
        defer {
            for l in layers { l.microBatchShare = (1, 1) }
            taskLevel?.sentenceShare = 1
            backend.shard = .whole
        }
        let shares = layers.indices.map { Float(totals.tokens(shard, layers[$0])) / Float(totals.layerTotals[$0]) }
        for (l, s) in zip(layers, shares) { l.microBatchShare = (s, 1 / Float(count)) }
        taskLevel?.sentenceShare = Float(shard.batchSize) / Float(totals.sentenceTotal)
        // The experts keep this shard's activations and gradients apart (docs/data-parallel.md, step 2).
        if count > 1 {
            backend.shard = Shard(index: c, count: count)
            model.network.dropoutState = ShardTotals.dropoutState(shard: c, from: dropoutAtStepStart)
        }

        var clock = MonotonicClock.seconds()
        var sections = phases.sectionSeconds()
        let ce = try model.network.forward(shard, training: true)
        clock = phases.recordResidual(.attention, passStart: clock, sectionsBefore: sections)
        let aux = model.moe.auxiliaryLosses
        let shardLoss = Double(ce.loss) + aux.weighted(by: model.configuration.losses)
        guard shardLoss.isFinite else {
            let culprit = try firstNonFiniteWeight(model)
            try model.zeroGradients()
            throw TrainingError.nonFinite(step: next, quantity: "loss of micro-batch \(c) (\(shardLoss))", tensor: culprit)
        }
        var outcome = ShardOutcome(lossSum: ce.lossSum,
                                   task: aux.task.map { $0 * Double(shard.batchSize) / Double(totals.sentenceTotal) },
                                   taskBalance: aux.taskBalance.map { $0 / Double(count) },
                                   tokenBalance: aux.tokenBalance.map { $0 / Double(count) }, dynamic: [])
        for (i, l) in layers.enumerated() {
            outcome.dynamic.append(l.lastLosses.dynamic.map { $0 * Double(totals.tokens(shard, l)) / Double(totals.layerTotals[i]) })
        }

        sections = phases.sectionSeconds(backward: true)
        try model.network.backward(lossScale: Float(ce.tokenCount) / Float(totals.targetTotal))
        _ = phases.recordResidual(.attentionBackward, passStart: clock, sectionsBefore: sections)
        return outcome
    }
}

/// The whole batch's totals a shard's losses are weighted by (`MicroBatches`): every coordinator
/// computes them from the whole sampled batch, whichever shard it runs.
struct ShardTotals {
    let count: Int
    let layerTotals: [Int]
    let targetTotal: Int
    let sentenceTotal: Int
    let decoderOnly: Bool
    let sides: [Side]

    init(_ model: TranslationModel, shards: [Seq2SeqBatch]) {
        count = shards.count
        decoderOnly = model.configuration.model.architecture == .decoderOnly
        sides = model.moe.layers.map(\.side)
        targetTotal = shards.reduce(0) { $0 + $1.targetTokens }
        sentenceTotal = shards.reduce(0) { $0 + $1.batchSize }
        var totals: [Int] = []
        for i in sides.indices {
            totals.append(shards.reduce(0) { [decoderOnly, sides] in $0 + Self.tokens($1, side: sides[i], decoderOnly: decoderOnly) })
        }
        layerTotals = totals
    }

    /// Non-pad tokens of `b` a layer sees: encoder layers the source, decoder layers the target
    /// (a prefix-LM's one stack: both).
    static func tokens(_ b: Seq2SeqBatch, side: Side, decoderOnly: Bool) -> Int {
        let src = Int(b.sourceMask.reduce(0, +)), tgt = b.targetTokens
        return decoderOnly ? src + tgt : (side == .encoder ? src : tgt)
    }

    func tokens(_ b: Seq2SeqBatch, _ layer: MoELayer) -> Int { Self.tokens(b, side: layer.side, decoderOnly: decoderOnly) }

    /// Draws reserved for each shard's dropout masks: shard c of a step draws from the step's starting
    /// state advanced by `c · 2^40` (far more than any shard uses), so that a shard's masks do not depend
    /// on the other shards' sizes — a data-parallel coordinator draws its shard's masks without knowing
    /// how many the shards before it took.
    static let drawsPerShard = 1 << 40

    /// The dropout generator's state at the start of shard `c`'s forward.
    static func dropoutState(shard c: Int, from start: UInt64) -> UInt64 {
        var g = RandomGenerator(seed: start)
        g.advance(by: c * drawsPerShard)
        return g.state
    }

    /// The generator's state after a step of `count` shards (every coordinator's alike).
    static func dropoutState(after count: Int, from start: UInt64) -> UInt64 { dropoutState(shard: count, from: start) }
}

/// One shard's contributions to the step's losses, already weighted (see `MicroBatches`).
struct ShardOutcome: Equatable {
    /// Σ of the shard's token losses (`L_mt` is Σ over shards / N).
    var lossSum: Double
    var task: Double?
    var taskBalance: Double?
    var tokenBalance: Double?
    /// Per MoE layer.
    var dynamic: [Double?]

    /// The step's `L_mt` and auxiliary losses: the shards' contributions added in shard order.
    static func combine(_ outcomes: [ShardOutcome], totals: ShardTotals) -> (translationLoss: Double, auxiliary: AuxiliaryLosses) {
        func add(_ x: inout Double?, _ v: Double?) { if let v { x = (x ?? 0) + v } }
        var lossSum = 0.0
        var task: Double?, taskBalance: Double?, tokenBalance: Double?
        var dynamic = [Double?](repeating: nil, count: totals.layerTotals.count)
        for o in outcomes {
            lossSum += o.lossSum
            add(&task, o.task)
            add(&taskBalance, o.taskBalance)
            add(&tokenBalance, o.tokenBalance)
            for i in dynamic.indices where i < o.dynamic.count { add(&dynamic[i], o.dynamic[i]) }
        }
        let dyn = dynamic.compactMap { $0 }
        let auxiliary = AuxiliaryLosses(task: task, taskBalance: taskBalance, tokenBalance: tokenBalance,
                                        dynamic: dyn.isEmpty ? nil : dyn.reduce(0, +) / Double(dyn.count))
        return (lossSum / Double(max(1, totals.targetTotal)), auxiliary)
    }
}
