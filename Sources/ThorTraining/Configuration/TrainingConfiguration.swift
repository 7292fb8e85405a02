import ThorTensor
import ThorModel

/// Optimization and run control (the `training` section).
/// Defaults: the property initializers (the only place they are written).
public struct TrainingConfiguration: ConfigurationSection {
    /// Peak learning rate of the inverse-square-root schedule.
    public var learningRate: Float = 5e-4
    /// Linear warm-up steps.
    public var warmupSteps: Int = 4000
    /// Global gradient-norm clip (0: off).
    public var clipNorm: Float = 1.0
    /// Adam β1, β2, ε (SPEC: 0.9, 0.98).
    public var adamBeta1: Float = 0.9
    public var adamBeta2: Float = 0.98
    public var adamEpsilon: Float = 1e-8
    /// Decoupled weight decay (AdamW; 0: plain Adam).
    public var weightDecay: Float = 0
    /// Source + target tokens (incl. padding) per batch.
    public var maxTokensPerBatch: Int = 4096
    /// Micro-batches C per optimizer step: the batch's sentences are split into C shards
    /// (sentence i → shard i mod C), each runs forward and backward alone, their gradients are
    /// summed in shard order, then one clip and Adam step (docs/data-parallel.md). 1: the whole batch at once.
    public var microBatches: Int = 1
    /// Optimizer steps of the run.
    public var maxSteps: Int = 100_000
    /// Seed of every random stream (data, weights, dropout).
    public var seed: UInt64 = 1
    /// Task sampling temperature: `P(τ) ∝ n_τ^{1/temperature}`.
    public var samplingTemperature: Float = 1.5
    /// Steps between dev-set evaluations (0: never).
    public var devInterval: Int = 1000
    /// Steps between checkpoints (0: only at the end).
    public var checkpointInterval: Int = 1000
    /// Steps between log lines.
    public var logInterval: Int = 100

    public init() {}

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case learningRate = "learning_rate", warmupSteps = "warmup_steps", clipNorm = "clip_norm"
        case adamBeta1 = "adam_beta1", adamBeta2 = "adam_beta2", adamEpsilon = "adam_epsilon"
        case weightDecay = "weight_decay", maxTokensPerBatch = "max_tokens_per_batch", microBatches = "micro_batches"
        case maxSteps = "max_steps"
        case seed, samplingTemperature = "sampling_temperature", devInterval = "dev_interval"
        case checkpointInterval = "checkpoint_interval", logInterval = "log_interval"
    }

    /// Keys a resumed run may change: they steer the run, not the model or its optimizer state.
    public static let resumableKeys: Set<CodingKeys> = [.maxSteps, .devInterval, .checkpointInterval, .logInterval]

    /// The largest `micro_batches` accepted (a batch must also hold at least that many sentences).
    public static let maxMicroBatches = 4096

    /// Adam settings for every parameter.
    public var adam: AdamSettings { AdamSettings(beta1: adamBeta1, beta2: adamBeta2, epsilon: adamEpsilon, weightDecay: weightDecay) }

    public func validate(path: String = "training") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        try Check.require(learningRate > 0 && learningRate.isFinite, p(.learningRate), "must be > 0, got \(learningRate)")
        try Check.require(warmupSteps >= 1, p(.warmupSteps), "must be ≥ 1, got \(warmupSteps)")
        try Check.require(clipNorm >= 0, p(.clipNorm), "must be ≥ 0 (0: no clipping), got \(clipNorm)")
        try Check.require(adamBeta1 >= 0 && adamBeta1 < 1, p(.adamBeta1), "must be in [0, 1), got \(adamBeta1)")
        try Check.require(adamBeta2 >= 0 && adamBeta2 < 1, p(.adamBeta2), "must be in [0, 1), got \(adamBeta2)")
        try Check.require(adamEpsilon > 0, p(.adamEpsilon), "must be > 0, got \(adamEpsilon)")
        try Check.require(weightDecay >= 0, p(.weightDecay), "must be ≥ 0, got \(weightDecay)")
        try Check.require(maxTokensPerBatch >= 1, p(.maxTokensPerBatch), "must be ≥ 1, got \(maxTokensPerBatch)")
        try Check.require(microBatches >= 1 && microBatches <= Self.maxMicroBatches, p(.microBatches),
                          "must be in 1…\(Self.maxMicroBatches) (1: the whole batch at once), got \(microBatches)")
        try Check.require(maxSteps >= 0, p(.maxSteps), "must be ≥ 0, got \(maxSteps)")
        try Check.require(samplingTemperature > 0 && samplingTemperature.isFinite, p(.samplingTemperature),
                          "must be > 0 (1: proportional to data size), got \(samplingTemperature)")
        try Check.require(devInterval >= 0, p(.devInterval), "must be ≥ 0 (0: never), got \(devInterval)")
        try Check.require(checkpointInterval >= 0, p(.checkpointInterval), "must be ≥ 0 (0: only at the end), got \(checkpointInterval)")
        try Check.require(logInterval >= 1, p(.logInterval), "must be ≥ 1, got \(logInterval)")
    }
}
