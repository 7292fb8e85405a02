import Foundation
import ThorTensor

/// Weights of the auxiliary losses and label smoothing (the `losses` section, SPEC §3).
public struct LossConfiguration: Sendable, Equatable {
    /// α, weight of `L_task`.
    public var alpha: Float = 1e-2
    /// β, weight of `L_task_lb`.
    public var beta: Float = 1e-2
    /// γ, weight of `L_tok_lb`.
    public var gamma: Float = 1e-2
    /// δ, weight of `L_dyn` (top-p only).
    public var delta: Float = 1e-4
    /// ε of the label-smoothed cross-entropy `L_mt`.
    public var labelSmoothing: Float = 0.1

    public init(alpha: Float = 1e-2, beta: Float = 1e-2, gamma: Float = 1e-2, delta: Float = 1e-4, labelSmoothing: Float = 0.1) {
        self.alpha = alpha; self.beta = beta; self.gamma = gamma; self.delta = delta; self.labelSmoothing = labelSmoothing
    }

    static let keys = ["alpha", "beta", "gamma", "delta", "label_smoothing"]

    init(reading value: JSONValue?, path: String) throws {
        let r = try SectionReader(value, path: path, allowed: Self.keys)
        alpha = try r.float("alpha", default: 1e-2)
        beta = try r.float("beta", default: 1e-2)
        gamma = try r.float("gamma", default: 1e-2)
        delta = try r.float("delta", default: 1e-4)
        labelSmoothing = try r.float("label_smoothing", default: 0.1)
    }

    var json: JSONValue {
        .object(["alpha": .number(alpha), "beta": .number(beta), "gamma": .number(gamma),
                 "delta": .number(delta), "label_smoothing": .number(labelSmoothing)])
    }

    public func validate(path: String = "losses") throws {
        for (k, v) in [("alpha", alpha), ("beta", beta), ("gamma", gamma), ("delta", delta)] {
            try Check.require(v >= 0 && v.isFinite, "\(path).\(k)", "must be a finite number ≥ 0, got \(v)")
        }
        try Check.require(labelSmoothing >= 0 && labelSmoothing < 1, "\(path).label_smoothing", "must be in [0, 1), got \(labelSmoothing)")
    }
}

/// Optimization and run control (the `training` section).
public struct TrainingConfiguration: Sendable, Equatable {
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
    /// Optimizer steps to run.
    public var maxSteps: Int = 100_000
    /// Seed of every random stream (weights, batching, dropout).
    public var seed: UInt64 = 1
    /// Task sampling temperature: `P(τ) ∝ n_τ^{1/temperature}`.
    public var samplingTemperature: Float = 1.5
    /// Steps between dev-set evaluations (0: never).
    public var devInterval: Int = 1000
    /// Steps between checkpoints (0: only at the end).
    public var checkpointInterval: Int = 1000
    /// Steps between log lines.
    public var logInterval: Int = 100
    /// Expert-worker processes (0: experts run in the coordinator process).
    public var workers: Int = 2
    /// Threads computing experts concurrently in one process.
    public var expertThreads: Int = 2
    /// Workers hosting each routed expert (0: 2 when there are at least 2 workers, else 1).
    public var replicas: Int = 0
    /// What happens when every replica of an expert is lost.
    public var onExpertLoss: ExpertLossPolicy = .restore

    public init() {}

    static let keys = ["learning_rate", "warmup_steps", "clip_norm", "adam_beta1", "adam_beta2", "adam_epsilon",
                       "weight_decay", "max_tokens_per_batch", "max_steps", "seed", "sampling_temperature",
                       "dev_interval", "checkpoint_interval", "log_interval", "workers", "expert_threads",
                       "replicas", "on_expert_loss"]

    init(reading value: JSONValue?, path: String) throws {
        let r = try SectionReader(value, path: path, allowed: Self.keys)
        learningRate = try r.float("learning_rate", default: 5e-4)
        warmupSteps = try r.int("warmup_steps", default: 4000)
        clipNorm = try r.float("clip_norm", default: 1.0)
        adamBeta1 = try r.float("adam_beta1", default: 0.9)
        adamBeta2 = try r.float("adam_beta2", default: 0.98)
        adamEpsilon = try r.float("adam_epsilon", default: 1e-8)
        weightDecay = try r.float("weight_decay", default: 0)
        maxTokensPerBatch = try r.int("max_tokens_per_batch", default: 4096)
        maxSteps = try r.int("max_steps", default: 100_000)
        let s = try r.int("seed", default: 1)
        try Check.require(s >= 0, r.full("seed"), "must be ≥ 0, got \(s)")
        seed = UInt64(s)
        samplingTemperature = try r.float("sampling_temperature", default: 1.5)
        devInterval = try r.int("dev_interval", default: 1000)
        checkpointInterval = try r.int("checkpoint_interval", default: 1000)
        logInterval = try r.int("log_interval", default: 100)
        workers = try r.int("workers", default: 2)
        expertThreads = try r.int("expert_threads", default: 2)
        replicas = try r.int("replicas", default: 0)
        onExpertLoss = try r.choice("on_expert_loss", default: ExpertLossPolicy.restore)!
    }

    var json: JSONValue {
        func n(_ v: Float) -> JSONValue { .number(v) }
        func i(_ v: Int) -> JSONValue { .number(Double(v)) }
        return .object([
            "learning_rate": n(learningRate), "warmup_steps": i(warmupSteps), "clip_norm": n(clipNorm),
            "adam_beta1": n(adamBeta1), "adam_beta2": n(adamBeta2), "adam_epsilon": n(adamEpsilon),
            "weight_decay": n(weightDecay), "max_tokens_per_batch": i(maxTokensPerBatch), "max_steps": i(maxSteps),
            "seed": .number(Double(seed)), "sampling_temperature": n(samplingTemperature),
            "dev_interval": i(devInterval), "checkpoint_interval": i(checkpointInterval), "log_interval": i(logInterval),
            "workers": i(workers), "expert_threads": i(expertThreads),
            "replicas": i(replicas), "on_expert_loss": .string(onExpertLoss.rawValue),
        ])
    }

    /// Adam settings for every parameter.
    public var adam: AdamSettings { AdamSettings(beta1: adamBeta1, beta2: adamBeta2, epsilon: adamEpsilon, weightDecay: weightDecay) }

    public func validate(path: String = "training") throws {
        func p(_ k: String) -> String { "\(path).\(k)" }
        try Check.require(learningRate > 0 && learningRate.isFinite, p("learning_rate"), "must be > 0, got \(learningRate)")
        try Check.require(warmupSteps >= 1, p("warmup_steps"), "must be ≥ 1, got \(warmupSteps)")
        try Check.require(clipNorm >= 0, p("clip_norm"), "must be ≥ 0 (0: no clipping), got \(clipNorm)")
        try Check.require(adamBeta1 >= 0 && adamBeta1 < 1, p("adam_beta1"), "must be in [0, 1), got \(adamBeta1)")
        try Check.require(adamBeta2 >= 0 && adamBeta2 < 1, p("adam_beta2"), "must be in [0, 1), got \(adamBeta2)")
        try Check.require(adamEpsilon > 0, p("adam_epsilon"), "must be > 0, got \(adamEpsilon)")
        try Check.require(weightDecay >= 0, p("weight_decay"), "must be ≥ 0, got \(weightDecay)")
        try Check.require(maxTokensPerBatch >= 1, p("max_tokens_per_batch"), "must be ≥ 1, got \(maxTokensPerBatch)")
        try Check.require(maxSteps >= 0, p("max_steps"), "must be ≥ 0, got \(maxSteps)")
        try Check.require(samplingTemperature > 0 && samplingTemperature.isFinite, p("sampling_temperature"),
                          "must be > 0 (1: proportional to data size), got \(samplingTemperature)")
        try Check.require(devInterval >= 0, p("dev_interval"), "must be ≥ 0 (0: never), got \(devInterval)")
        try Check.require(checkpointInterval >= 0, p("checkpoint_interval"), "must be ≥ 0 (0: only at the end), got \(checkpointInterval)")
        try Check.require(logInterval >= 1, p("log_interval"), "must be ≥ 1, got \(logInterval)")
        try Check.require(workers >= 0, p("workers"), "must be ≥ 0 (0: in-process experts), got \(workers)")
        try Check.require(expertThreads >= 1, p("expert_threads"), "must be ≥ 1, got \(expertThreads)")
        try Check.require(replicas >= 0 && (workers == 0 || replicas <= workers), p("replicas"),
                          "must be between 0 (automatic) and the worker count (\(workers)), got \(replicas)")
    }

    /// Replicas per expert the run uses: `replicas`, or 2 when there are at least 2 workers.
    public var effectiveReplicas: Int {
        if workers == 0 { return 1 }
        return replicas > 0 ? replicas : (workers >= 2 ? 2 : 1)
    }
}

/// What a run does when every replica of an expert is lost (`training.on_expert_loss`,
/// `thor train --on-expert-loss`).
public enum ExpertLossPolicy: String, Sendable, CaseIterable {
    /// Stop with a non-zero status naming the lost experts and the checkpoint to resume from.
    case fail
    /// Pause until a worker that still holds them comes back, then redo the step.
    case wait
    /// Reload the whole run from the last checkpoint and continue (deterministic replay).
    case restore
}

/// A whole run's configuration: one JSON file with sections `model`, `routing`, `losses`, `training`,
/// `data`, `evaluation`.
///
/// Every key is optional except `model.vocabulary_size` may be left 0 (taken from the
/// BPE vocabulary). Reading rejects unknown keys, wrong types and impossible values
/// with a `ConfigurationError` that names the key path. See docs/configuration.md.
public struct ThorConfiguration: Sendable, Equatable {
    public var model: TransformerConfiguration
    public var routing: RoutingConfiguration
    public var losses: LossConfiguration
    public var training: TrainingConfiguration
    public var data: DataConfiguration
    public var evaluation: EvaluationConfiguration

    public init(model: TransformerConfiguration = TransformerConfiguration(vocabularySize: 0),
                routing: RoutingConfiguration = RoutingConfiguration(),
                losses: LossConfiguration = LossConfiguration(),
                training: TrainingConfiguration = TrainingConfiguration(),
                data: DataConfiguration = DataConfiguration(),
                evaluation: EvaluationConfiguration = EvaluationConfiguration()) {
        self.model = model; self.routing = routing; self.losses = losses; self.training = training
        self.data = data; self.evaluation = evaluation
    }

    static let sections = ["model", "routing", "losses", "training", "data", "evaluation"]
    static let modelKeys = ["vocabulary_size", "model_dim", "hidden_dim", "heads", "encoder_layers", "decoder_layers",
                            "activation", "dropout", "attention_dropout", "max_positions", "pad_id"]

    /// Reads and validates a configuration from JSON text.
    public init(json data: Data) throws {
        try self.init(value: JSONValue.parse(data))
    }

    /// Reads and validates a configuration file.
    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(path: "", message: "cannot read the file \(path)")
        }
        try self.init(json: data)
    }

    /// Reads and validates a parsed JSON document.
    public init(value: JSONValue) throws {
        let top = try SectionReader(value, path: "", allowed: Self.sections)
        let m = try SectionReader(top.raw("model"), path: "model", allowed: Self.modelKeys)
        let d = TransformerConfiguration(vocabularySize: 0)
        model = TransformerConfiguration(
            vocabularySize: try m.int("vocabulary_size", default: d.vocabularySize),
            modelDim: try m.int("model_dim", default: d.modelDim),
            hiddenDim: try m.int("hidden_dim", default: d.hiddenDim),
            heads: try m.int("heads", default: d.heads),
            encoderLayers: try m.int("encoder_layers", default: d.encoderLayers),
            decoderLayers: try m.int("decoder_layers", default: d.decoderLayers),
            activation: try m.choice("activation", default: d.activation)!,
            dropout: try m.float("dropout", default: d.dropout),
            attentionDropout: try m.float("attention_dropout", default: d.attentionDropout),
            maxPositions: try m.int("max_positions", default: d.maxPositions),
            padID: try m.int("pad_id", default: d.padID))
        routing = try RoutingConfiguration(reading: top.raw("routing"), path: "routing")
        losses = try LossConfiguration(reading: top.raw("losses"), path: "losses")
        training = try TrainingConfiguration(reading: top.raw("training"), path: "training")
        data = try DataConfiguration(reading: top.raw("data"), path: "data")
        evaluation = try EvaluationConfiguration(reading: top.raw("evaluation"), path: "evaluation")
        try validate()
    }

    /// The configuration as a JSON tree (every key, defaults included).
    public var jsonValue: JSONValue {
        let m = model
        func i(_ v: Int) -> JSONValue { .number(Double(v)) }
        func f(_ v: Float) -> JSONValue { .number(v) }
        return .object([
            "model": .object([
                "vocabulary_size": i(m.vocabularySize), "model_dim": i(m.modelDim), "hidden_dim": i(m.hiddenDim),
                "heads": i(m.heads), "encoder_layers": i(m.encoderLayers), "decoder_layers": i(m.decoderLayers),
                "activation": .string(m.activation.rawValue), "dropout": f(m.dropout),
                "attention_dropout": f(m.attentionDropout), "max_positions": i(m.maxPositions), "pad_id": i(m.padID),
            ]),
            "routing": routing.json, "losses": losses.json, "training": training.json,
            "data": data.json, "evaluation": evaluation.json,
        ])
    }

    /// JSON text of the whole configuration (sorted keys), readable by `init(json:)`.
    public var jsonString: String { jsonValue.serialized() + "\n" }

    /// A copy with `overrides` applied (key path → value text, e.g. `"routing.threshold": "0.7"`,
    /// `"routing.max_experts": "null"`), then re-read and re-validated as a whole.
    /// Values are parsed as JSON when they parse, else taken as strings.
    public func applying(overrides: [String: String]) throws -> ThorConfiguration {
        guard case .object(var root) = jsonValue else { fatalError("configuration serializes to an object") }
        for path in overrides.keys.sorted() {
            let parts = path.split(separator: ".").map(String.init)
            guard parts.count == 2 else {
                throw ConfigurationError(path: path, message: "an override names `section.key` (sections: \(Self.sections.joined(separator: ", ")))")
            }
            guard case .object(var section)? = root[parts[0]] else {
                throw ConfigurationError(path: path, message: "unknown section `\(parts[0])`; allowed: \(Self.sections.joined(separator: ", "))")
            }
            section[parts[1]] = JSONValue.parseScalar(overrides[path]!)
            root[parts[0]] = .object(section)
        }
        return try ThorConfiguration(value: .object(root))
    }

    /// Checks the sections and the constraints between them.
    public func validate() throws {
        let m = model
        try Check.require(m.vocabularySize >= 0, "model.vocabulary_size", "must be ≥ 0 (0: from the BPE vocabulary), got \(m.vocabularySize)")
        try Check.require(m.modelDim >= 1, "model.model_dim", "must be ≥ 1, got \(m.modelDim)")
        try Check.require(m.modelDim % 2 == 0, "model.model_dim", "must be even (sinusoidal positions), got \(m.modelDim)")
        try Check.require(m.hiddenDim >= 1, "model.hidden_dim", "must be ≥ 1, got \(m.hiddenDim)")
        try Check.require(m.heads >= 1, "model.heads", "must be ≥ 1, got \(m.heads)")
        try Check.require(m.modelDim % m.heads == 0, "model.heads",
                          "model_dim (\(m.modelDim)) must be divisible by heads; got \(m.heads)")
        try Check.require(m.encoderLayers >= 1, "model.encoder_layers", "must be ≥ 1, got \(m.encoderLayers)")
        try Check.require(m.decoderLayers >= 1, "model.decoder_layers", "must be ≥ 1, got \(m.decoderLayers)")
        try Check.require(m.dropout >= 0 && m.dropout < 1, "model.dropout", "must be in [0, 1), got \(m.dropout)")
        try Check.require(m.attentionDropout >= 0 && m.attentionDropout < 1, "model.attention_dropout",
                          "must be in [0, 1), got \(m.attentionDropout)")
        try Check.require(m.maxPositions >= 2, "model.max_positions", "must be ≥ 2, got \(m.maxPositions)")
        try Check.require(m.padID >= 0 && (m.vocabularySize == 0 || m.padID < m.vocabularySize), "model.pad_id",
                          "must be in 0..<vocabulary_size, got \(m.padID)")
        try routing.validate()
        try losses.validate()
        try training.validate()
        try data.validate()
        try evaluation.validate()
        if routing.variant.usesTaskPredictor {
            try Check.require(routing.moeEvery <= m.encoderLayers, "routing.moe_every",
                "variant \(routing.variant.rawValue) needs an encoder MoE layer (its task predictor reads the first one's input): moe_every (\(routing.moeEvery)) must be ≤ encoder_layers (\(m.encoderLayers))")
        }
    }
}
