import Foundation
import ThorTensor
import ThorModel
import ThorData

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
    }

    /// Everything a checkpoint needs besides the weights.
    public var state: TrainingState {
        TrainingState(step: step, dataPosition: batches.position, dropoutState: model.network.dropoutState,
                      tasks: data.tasks)
    }

    /// Writes a checkpoint of the current state.
    public func saveCheckpoint(to directory: String) throws {
        try RunCheckpoint.save(model: model, tokenizer: data.tokenizer, state: state, to: directory)
    }

    /// One optimizer step on the next training batch.
    @discardableResult
    public func trainStep() throws -> StepResult {
        try trainStep(on: batches.next())
    }

    /// One optimizer step on `batch`.
    public func trainStep(on batch: Seq2SeqBatch) throws -> StepResult {
        let t = model.configuration.training
        let ce = try model.network.forward(batch, training: true)
        let aux = model.moe.auxiliaryLosses
        let total = Double(ce.loss) + aux.weighted(by: model.configuration.losses)
        guard total.isFinite else {
            try model.zeroGradients()
            throw TrainingError.nonFiniteLoss(step: step + 1)
        }
        try model.network.backward(lossScale: 1)
        // Global gradient norm: coordinator parameters in order, then experts in key order,
        // so the sum is the same whatever the placement.
        var squared = 0.0
        for p in model.parameters { squared += Kernels.sumOfSquares(p.grad.pointer, count: p.count) }
        let expertNorms = try model.backend.squaredGradientNorms()
        for key in expertNorms.keys.sorted() { squared += expertNorms[key]! }
        let clip = Adam.clipScale(squaredNorm: squared, maxNorm: t.clipNorm)
        let next = step + 1
        let lr = Adam.inverseSquareRootRate(peak: t.learningRate, warmup: t.warmupSteps, step: next)
        for p in model.parameters {
            Adam.update(p, learningRate: lr, clipScale: clip, step: next, settings: t.adam)
        }
        try model.backend.step(learningRate: lr, clipScale: clip, step: next)
        step = next
        let tokens = Int(batch.sourceMask.reduce(0, +) + batch.targetMask.reduce(0, +))
        return StepResult(step: next, loss: total, translationLoss: Double(ce.loss), auxiliary: aux,
                          gradientNorm: squared.squareRoot(), learningRate: lr, clipScale: clip, tokens: tokens)
    }
}
