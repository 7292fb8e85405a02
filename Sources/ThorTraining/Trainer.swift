import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorData
import ThorCluster

/// Figures of one optimizer step.
public struct StepResult: Sendable {
    public var step: Int
    /// `L = L_mt + α L_task + β L_task_lb + γ L_tok_lb + δ L_dyn`.
    public var loss: Double
    public var translationLoss: Double
    public var auxiliary: AuxiliaryLosses
    public var gradientNorm: Double
    public var learningRate: Float
    public var clipScale: Float
    /// Non-pad source + target tokens of the batch.
    public var tokens: Int
}

/// Runs optimizer steps on a `TranslationModel`: forward, backward through the
/// coordinator and the experts, global gradient-norm clipping over coordinator and
/// experts (summed in a fixed order), the inverse-square-root schedule and Adam.
public final class Trainer {
    public let model: TranslationModel
    public let data: TranslationData
    public private(set) var batches: TrainingBatches
    /// Optimizer steps done so far.
    public private(set) var step: Int
    /// Seconds per phase of the steps so far (running totals; see `Phase`). The MoE layers and
    /// the cluster coordinator record their sections into it; the trainer the passes' rest,
    /// the gradient norm and the optimizer step. Timing never changes a result.
    public let phases = PhaseTimer()
    /// Data-parallel coordinators (docs/data-parallel.md, step 3): this trainer is their leader and runs
    /// shard 0 of each step; the followers' shards come from `dataParallel` (nil: one coordinator).
    public var dataParallel: DataParallelLeader?

    /// Starts at step 0, or continues from `checkpoint` (weights, moments, data position, RNG).
    public init(model: TranslationModel, data: TranslationData, checkpoint: RunCheckpoint? = nil) throws {
        self.model = model
        self.data = data
        let t = model.configuration.training
        batches = try TrainingBatches(corpus: data.train, maxTokens: t.maxTokensPerBatch,
                                      temperature: Double(t.samplingTemperature), seed: t.seed)
        step = 0
        if let checkpoint {
            try checkpoint.restore(into: model)
            do { try batches.restore(checkpoint.state.dataPosition) } catch {
                throw TrainingError.checkpoint("\(checkpoint.directory): \(error)")
            }
            step = checkpoint.state.step
        }
        model.moe.activateTaskLevel(afterSteps: step)
        for layer in model.moe.layers { layer.phaseTimer = phases }
        model.moe.taskLevel?.phaseTimer = phases
        (model.backend as? RemoteExpertBackend)?.coordinator.phaseTimer = phases
    }

    /// Everything a checkpoint needs besides the weights.
    public var state: TrainingState {
        TrainingState(step: step, dataPosition: batches.position, dropoutState: model.network.dropoutState,
                      tasks: data.tasks)
    }

    /// Writes a checkpoint of the current state.
    public func saveCheckpoint(to directory: String) throws {
        // Every coordinator must hold the same dense parameters (else the checkpoint is only the leader's).
        try dataParallel?.verifyParameters(model.parameters, step: step)
        try RunCheckpoint.save(model: model, tokenizer: data.tokenizer, state: state, to: directory)
    }

    /// The first weight holding a non-finite value: coordinator parameters in order, then
    /// the experts' tensors in key order; or why none is to blame.
    static func firstNonFiniteWeight(_ model: TranslationModel) throws -> String {
        if let w = NonFinite.first(in: model.parameters.map { ($0.name, $0.value) }) { return "first non-finite: \(w)" }
        let experts = try model.backend.exportState()
        for key in experts.keys.sorted() {
            let tensors = experts[key]!.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
            if let w = NonFinite.first(in: tensors) { return "first non-finite: \(w)" }
        }
        return "every weight is finite: the forward pass overflowed"
    }

    /// Decides what happens when a step fails because experts were lost (every replica
    /// gone): it runs after the step was rolled back and either makes the experts available
    /// again (the step is then redone, or the run continues from a restored state) or throws.
    /// nil: the error ends the step (no redo).
    public var expertLossHandler: ((_ error: ClusterError, _ duringCommit: Bool, _ trainer: Trainer) throws -> Void)?

    /// One optimizer step on the next training batch. A step is a transaction: when experts
    /// are lost before it commits, nothing of it is kept — the coordinator's gradients and the
    /// experts' gradients and kept activations are dropped, the data position and the dropout
    /// generator are put back — and, with an `expertLossHandler`, it is redone.
    @discardableResult
    public func trainStep() throws -> StepResult {
        var aborts = 0
        while true {
            let position = batches.position
            let dropout = model.network.dropoutState
            let batch = batches.next()
            committing = false
            let microBatches = model.configuration.training.microBatches
            if microBatches > 1 {
                do { try MicroBatches.check(batch, count: microBatches, step: step + 1) } catch {
                    try batches.restore(position)   // a refused step changes no state
                    throw error
                }
            }
            do {
                return try trainStep(on: batch)
            } catch let e as ClusterError {
                let duringCommit = committing
                // Data-parallel coordinators redo a step together (docs/data-parallel.md, step 4): no
                // follower may have a request of it in flight when the workers roll it back.
                if let dataParallel {
                    guard case .stepAborted = e else { throw e }
                    try dataParallel.quiesce(step: step + 1)
                }
                switch e {
                case .stepAborted:
                    // A primary was lost mid-step; its replicas took over: redo the step on them.
                    redone += 1
                    aborts += 1
                    guard aborts <= 8 else { throw e }
                case .expertsLost where expertLossHandler != nil: break
                default: throw e
                }
                model.network.zeroGradients()
                try? model.backend.zeroGradients()
                try batches.restore(position)
                model.network.dropoutState = dropout
                if case .expertsLost = e { try expertLossHandler!(e, duringCommit, self) }
            }
        }
    }

    /// Steps rolled back and redone so far (a primary lost mid-step).
    public private(set) var redone = 0

    private var committing = false

    /// Puts the whole run back to `checkpoint` (weights, moments, data position, RNG, step).
    public func restore(from checkpoint: RunCheckpoint) throws {
        try checkpoint.restore(into: model)
        do { try batches.restore(checkpoint.state.dataPosition) } catch {
            throw TrainingError.checkpoint("\(checkpoint.directory): \(error)")
        }
        step = checkpoint.state.step
        model.moe.activateTaskLevel(afterSteps: step)
    }

    /// The run's state in memory (coordinator and expert tensors, data position, RNG, step):
    /// what `--on-expert-loss restore` returns to before the first checkpoint exists.
    public func snapshot() throws -> TrainerSnapshot {
        var coordinator: [Tensor] = []
        for p in model.parameters { coordinator += [Tensor(copying: p.value), Tensor(copying: p.m), Tensor(copying: p.v)] }
        return TrainerSnapshot(state: state, coordinator: coordinator, experts: try model.backend.exportState())
    }

    /// Puts the run back to `snapshot`.
    public func restore(from snapshot: TrainerSnapshot) throws {
        try model.backend.importState(snapshot.experts)
        var i = 0
        for p in model.parameters {
            p.value.copy(from: snapshot.coordinator[i]); p.m.copy(from: snapshot.coordinator[i + 1]); p.v.copy(from: snapshot.coordinator[i + 2])
            i += 3
        }
        model.network.dropoutState = snapshot.state.dropoutState
        try batches.restore(snapshot.state.dataPosition)
        step = snapshot.state.step
        model.moe.activateTaskLevel(afterSteps: step)
    }

    /// One optimizer step on `batch`.
    public func trainStep(on batch: Seq2SeqBatch) throws -> StepResult {
        let result = try Self.optimizerStep(model, on: batch, step: step + 1, phases: phases, dataParallel: dataParallel) { self.committing = $0 }
        step = result.step
        model.moe.activateTaskLevel(afterSteps: step)  // what a dev evaluation after this step routes with
        return result
    }

    /// One optimizer step of `model` on `batch` as step number `next` (counting from 1):
    /// forward, backward, the global gradient norm, clipping, the schedule and Adam on the
    /// experts (the commit point; `committing` is told when it starts and ends) and then on
    /// the coordinator. What `trainStep(on:)` runs, and `thor bench train` measures. The pass's
    /// attention (the part not timed inside the MoE layers), gradient norm and optimizer go to `phases`.
    public static func optimizerStep(_ model: TranslationModel, on batch: Seq2SeqBatch, step next: Int,
                                     phases: PhaseTimer = PhaseTimer(), dataParallel: DataParallelLeader? = nil,
                                     committing: (Bool) -> Void = { _ in }) throws -> StepResult {
        let t = model.configuration.training
        model.moe.activateTaskLevel(afterSteps: next - 1)  // off during routing.task_warmup_steps
        var clock = MonotonicClock.seconds()
        let translationLoss: Double, aux: AuxiliaryLosses
        if t.microBatches == 1 {
            var sections = phases.sectionSeconds()
            let ce = try model.network.forward(batch, training: true)
            clock = phases.recordResidual(.attention, passStart: clock, sectionsBefore: sections)
            aux = model.moe.auxiliaryLosses
            translationLoss = Double(ce.loss)
            let total = translationLoss + aux.weighted(by: model.configuration.losses)
            guard total.isFinite else {
                let culprit = try firstNonFiniteWeight(model)
                try model.zeroGradients()
                throw TrainingError.nonFinite(step: next, quantity: "loss (\(total))", tensor: culprit)
            }
            sections = phases.sectionSeconds(backward: true)
            try model.network.backward(lossScale: 1)
            clock = phases.recordResidual(.attentionBackward, passStart: clock, sectionsBefore: sections)
        } else if let dataParallel {
            // Data-parallel coordinators: shard 0 here, the others' gradients added in shard order.
            (translationLoss, aux) = try dataParallel.accumulate(model, batch: batch, step: next, phases: phases)
            clock = MonotonicClock.seconds()
        } else {
            // Micro-batches: the same step on the batch's C shards, gradients summed in shard order.
            let shards = try MicroBatches.split(batch, into: t.microBatches, step: next)
            (translationLoss, aux) = try accumulate(model, shards: shards, step: next, phases: phases)
            clock = MonotonicClock.seconds()
        }
        let total = translationLoss + aux.weighted(by: model.configuration.losses)
        // Global gradient norm: coordinator parameters in order, then experts in key order,
        // so the sum is the same whatever the placement.
        // Each parameter's sum of squares on any thread (dynamic order), added here in parameter
        // order: the same bits as one serial loop.
        let parameters = model.parameters
        var squared = 0.0
        for s in Parallel.map(parameters.count, threads: Parallel.processors, {
            Kernels.sumOfSquares(parameters[$0].grad.pointer, count: parameters[$0].count)
        }) { squared += s }
        let expertNorms = try model.backend.squaredGradientNorms()
        for key in expertNorms.keys.sorted() { squared += expertNorms[key]! }
        // A non-finite gradient stops here, before any weight changes.
        guard squared.isFinite else {
            let culprit = NonFinite.first(in: model.parameters.map { ($0.name + ".grad", $0.grad) })
                ?? expertNorms.keys.sorted().first { !expertNorms[$0]!.isFinite }
                    .map { "a gradient of expert \($0) (\($0.parameterPrefix).*)" }
                ?? "no single tensor: the sum of squares overflowed"
            try model.zeroGradients()
            throw TrainingError.nonFinite(step: next, quantity: "gradient norm (\(squared.squareRoot()))",
                                          tensor: "first non-finite: \(culprit)")
        }
        clock = phases.add(.gradientNorm, since: clock)
        let clip = Adam.clipScale(squaredNorm: squared, maxNorm: t.clipNorm)
        let lr = Adam.inverseSquareRootRate(peak: t.learningRate, warmup: t.warmupSteps, step: next)
        // The experts' optimizer step is the commit point; the coordinator's own Adam runs
        // after it, so a step that fails before committing leaves the coordinator untouched.
        committing(true)
        try model.backend.step(learningRate: lr, clipScale: clip, step: next)
        committing(false)
        try dataParallel?.broadcast(model.parameters, learningRate: lr, clipScale: clip, step: next)
        Adam.update(model.parameters, learningRate: lr, clipScale: clip, step: next, settings: t.adam, threads: Parallel.processors)
        phases.add(.optimizer, since: clock)
        let tokens = Int(batch.sourceMask.reduce(0, +) + batch.targetMask.reduce(0, +))
        return StepResult(step: next, loss: total, translationLoss: translationLoss, auxiliary: aux,
                          gradientNorm: squared.squareRoot(), learningRate: lr, clipScale: clip, tokens: tokens)
    }
}

extension PhaseTimer {
    /// The sum of the sections timed inside a forward (or backward) pass so far.
    func sectionSeconds(backward: Bool = false) -> Double {
        Phase.forwardSections.reduce(0) { $0 + self[backward ? $1.backward : $1] }
    }

    /// Adds to `residual` the pass's time not taken by its timed sections; returns now.
    func recordResidual(_ residual: Phase, passStart: Double, sectionsBefore: Double) -> Double {
        let now = MonotonicClock.seconds()
        let inside = sectionSeconds(backward: residual == .attentionBackward) - sectionsBefore
        add(residual, max(0, now - passStart - inside))
        return now
    }
}

/// A run's state held in memory (see `Trainer.snapshot()`).
public struct TrainerSnapshot {
    public var state: TrainingState
    /// Every coordinator parameter's value, Adam m and v, in `model.parameters` order.
    var coordinator: [Tensor]
    public var experts: [ExpertKey: [String: Tensor]]
}
