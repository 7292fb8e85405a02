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
        let layers = model.moe.layers, taskLevel = model.moe.taskLevel
        let decoderOnly = model.configuration.model.architecture == .decoderOnly
        // Non-pad tokens of each shard a layer sees: encoder layers the source, decoder layers the
        // target (a prefix-LM's one stack: both).
        func tokens(_ b: Seq2SeqBatch, _ layer: MoELayer) -> Int {
            let src = Int(b.sourceMask.reduce(0, +)), tgt = b.targetTokens
            return decoderOnly ? src + tgt : (layer.side == .encoder ? src : tgt)
        }
        let layerTotals = layers.map { l in shards.reduce(0) { $0 + tokens($1, l) } }
        let targetTotal = shards.reduce(0) { $0 + $1.targetTokens }
        let sentenceTotal = shards.reduce(0) { $0 + $1.batchSize }
        let backend = model.backend
        defer {
            for l in layers { l.microBatchShare = (1, 1) }
            taskLevel?.sentenceShare = 1
            backend.shard = .whole
        }
        var sums: [Tensor] = []
        var lossSum = 0.0
        var task: Double?, taskBalance: Double?, tokenBalance: Double?
        var dynamic = [Double?](repeating: nil, count: layers.count)
        func add(_ x: inout Double?, _ v: Double?) { if let v { x = (x ?? 0) + v } }
        for (c, shard) in shards.enumerated() {
            let shares = layers.indices.map { Float(tokens(shard, layers[$0])) / Float(layerTotals[$0]) }
            for (l, s) in zip(layers, shares) { l.microBatchShare = (s, 1 / Float(count)) }
            taskLevel?.sentenceShare = Float(shard.batchSize) / Float(sentenceTotal)
            // The experts keep this shard's activations and gradients apart (docs/data-parallel.md, step 2).
            if count > 1 { backend.shard = Shard(index: c, count: count) }

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
            lossSum += ce.lossSum
            add(&task, aux.task.map { $0 * Double(shard.batchSize) / Double(sentenceTotal) })
            add(&taskBalance, aux.taskBalance.map { $0 / Double(count) })
            add(&tokenBalance, aux.tokenBalance.map { $0 / Double(count) })
            for (i, l) in layers.enumerated() {
                add(&dynamic[i], l.lastLosses.dynamic.map { $0 * Double(tokens(shard, l)) / Double(layerTotals[i]) })
            }

            sections = phases.sectionSeconds(backward: true)
            try model.network.backward(lossScale: Float(ce.tokenCount) / Float(targetTotal))
            _ = phases.recordResidual(.attentionBackward, passStart: clock, sectionsBefore: sections)
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
        let dyn = dynamic.compactMap { $0 }
        let auxiliary = AuxiliaryLosses(task: task, taskBalance: taskBalance, tokenBalance: tokenBalance,
                                        dynamic: dyn.isEmpty ? nil : dyn.reduce(0, +) / Double(dyn.count))
        return (lossSum / Double(max(1, targetTotal)), auxiliary)
    }
}
