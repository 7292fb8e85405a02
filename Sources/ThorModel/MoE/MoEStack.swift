import ThorTensor
import ThorExperts

/// Auxiliary losses of the last training step, each the mean over the MoE layers
/// (nil when the variant has no such loss). SPEC §3.
public struct AuxiliaryLosses: Sendable, Equatable {
    /// `L_task`, cross-entropy of `P_task` against the gold task, mean over sentences.
    public var task: Double?
    /// `L_task_lb`.
    public var taskBalance: Double?
    /// `L_tok_lb`.
    public var tokenBalance: Double?
    /// `L_dyn`.
    public var dynamic: Double?

    public init(task: Double? = nil, taskBalance: Double? = nil, tokenBalance: Double? = nil, dynamic: Double? = nil) {
        self.task = task; self.taskBalance = taskBalance; self.tokenBalance = tokenBalance; self.dynamic = dynamic
    }

    /// `α L_task + β L_task_lb + γ L_tok_lb + δ L_dyn` — the part of `L` added to `L_mt`.
    public func weighted(by w: LossConfiguration) -> Double {
        Double(w.alpha) * (task ?? 0) + Double(w.beta) * (taskBalance ?? 0)
            + Double(w.gamma) * (tokenBalance ?? 0) + Double(w.delta) * (dynamic ?? 0)
    }
}

/// The MoE layers of one encoder-decoder model and what they share: the task level,
/// the expert backend, loss weights and the statistics collector.
///
/// Usage: build the backend for `MoEStack.expertKeys(model:routing:)` and
/// `MoEStack.expertSpec(model:seed:)`, create the stack, and give the Transformer
/// `stack.taskLevel` and `stack.sublayer(side:layerIndex:)` as its FFN factory (nil: a dense FFN).
/// The Transformer runs the task level once per pass at the input of the first encoder MoE
/// sub-block, hands `r` to every MoE layer in its `TokenLayout`, and sums the layers' `∂L/∂r`
/// for the task level's backward.
public final class MoEStack {
    public let model: TransformerConfiguration
    public let routing: RoutingConfiguration
    public let losses: LossConfiguration
    public let backend: ExpertBackend
    /// The task predictor and `E_task` (task-predictor variants), run by the model, not by a layer.
    public let taskLevel: TaskLevel?
    /// MoE layers by ordinal (encoder ones first).
    public let layers: [MoELayer]
    public let collector = RoutingStatisticsCollector()

    /// Positions of the MoE layers, in ordinal order: encoder layers `i` with
    /// `(i + 1) % moe_every == 0`, then decoder ones (decoder-only: the layers of its one stack).
    public static func layerPlan(model: TransformerConfiguration, routing: RoutingConfiguration) -> [(side: Side, index: Int)] {
        guard routing.variant != .dense else { return [] }
        if model.architecture == .decoderOnly {
            // One stack of `encoder_layers + decoder_layers` layers, named `decoder.layers.i`.
            return (0..<model.prefixLMLayers).filter(routing.isMoELayer).map { (Side.decoder, $0) }
        }
        return (0..<model.encoderLayers).filter(routing.isMoELayer).map { (Side.encoder, $0) }
            + (0..<model.decoderLayers).filter(routing.isMoELayer).map { (Side.decoder, $0) }
    }

    /// Every routed expert of the model, in canonical order.
    public static func expertKeys(model: TransformerConfiguration, routing: RoutingConfiguration) -> [ExpertKey] {
        let l = layerPlan(model: model, routing: routing).count
        return (0..<l).flatMap { layer in (0..<routing.experts).map { ExpertKey(layer: layer, expert: $0) } }
    }

    /// The routed experts' common spec.
    public static func expertSpec(model: TransformerConfiguration, seed: UInt64, adam: AdamSettings = AdamSettings()) -> ExpertSpec {
        ExpertSpec(modelDim: model.modelDim, hiddenDim: model.hiddenDim, activation: model.activation, seed: seed, adam: adam)
    }

    /// Builds every MoE layer. `routing.tasks` must be ≥ 1 for variants with a task predictor
    /// and for hard routing. Initial weights derive from `seed` (one stream per layer).
    public init(model: TransformerConfiguration, routing: RoutingConfiguration, losses: LossConfiguration,
                backend: ExpertBackend, seed: UInt64) throws {
        try routing.validate()
        try losses.validate()
        let v = routing.variant
        if v.usesTaskPredictor || v == .hard {
            try Check.require(routing.tasks >= 1, "routing.tasks",
                              "variant \(v.rawValue) needs the number of tasks (≥ 1), got \(routing.tasks)")
        }
        let plan = Self.layerPlan(model: model, routing: routing)
        if v.usesTaskPredictor {
            try Check.require(plan.first?.side == .encoder || (model.architecture == .decoderOnly && !plan.isEmpty), "routing.moe_every",
                              "variant \(v.rawValue) needs an encoder MoE layer (moe_every ≤ encoder_layers)")
        }
        guard backend.spec.modelDim == model.modelDim else {
            throw MoEError.wrongShape("expert backend width \(backend.spec.modelDim), model width \(model.modelDim)")
        }
        self.model = model; self.routing = routing; self.losses = losses; self.backend = backend
        taskLevel = v.usesTaskPredictor
            ? TaskLevel(modelDim: model.modelDim, tasks: routing.tasks, kind: v.representation, lossWeight: losses.alpha,
                        seed: seed, encoderLayer: plan.first?.index ?? 0, collector: collector)
            : nil
        var built: [MoELayer] = []
        for (ordinal, pos) in plan.enumerated() {
            var rng = RandomGenerator(seed: seed, stream: [0x30E, pos.side == .encoder ? 0 : 1, UInt64(pos.index)])
            built.append(MoELayer(name: "\(pos.side.rawValue).layers.\(pos.index).moe", ordinal: ordinal, side: pos.side,
                                  modelDim: model.modelDim, hiddenDim: model.hiddenDim, activation: model.activation,
                                  routing: routing, losses: losses, moeLayerCount: plan.count, backend: backend,
                                  collector: collector, rng: &rng))
        }
        layers = built
    }

    /// The MoE sublayer at Transformer layer `layerIndex` of `side`, or nil (a dense FFN goes there).
    public func sublayer(side: Side, layerIndex: Int) -> MoELayer? {
        layers.first { $0.side == side && $0.name == "\(side.rawValue).layers.\(layerIndex).moe" }
    }

    /// Switches the layers' task level on or off for the step after `done` optimizer steps:
    /// off while `done < routing.task_warmup_steps` (the warm-up), on from then on. The trainer
    /// calls it before every step and whenever its step count changes (start, resume, restore).
    public func activateTaskLevel(afterSteps done: Int) {
        let active = done >= routing.taskWarmupSteps
        for layer in layers { layer.taskLevelActive = active }
    }

    /// Coordinator-side parameters: the task level's, then every MoE layer's (the order the
    /// Transformer lists them in).
    public var parameters: [Parameter] { (taskLevel?.parameters ?? []) + layers.flatMap(\.parameters) }

    /// Loss values of the last training forward, each averaged over the MoE layers.
    public var auxiliaryLosses: AuxiliaryLosses {
        func mean(_ f: (LayerLosses) -> Double?) -> Double? {
            let v = layers.compactMap { f($0.lastLosses) }
            return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
        }
        return AuxiliaryLosses(task: taskLevel?.loss, taskBalance: mean(\.taskBalance),
                               tokenBalance: mean(\.tokenBalance), dynamic: mean(\.dynamic))
    }

    /// Starts (or restarts) accumulating routing statistics over the following forwards.
    public func startCollectingStatistics() {
        collector.statistics = RoutingStatistics(layers: layers.count, experts: routing.experts, tasks: routing.tasks)
    }

    /// Returns what was accumulated since `startCollectingStatistics` and stops collecting.
    public func takeStatistics() -> RoutingStatistics? {
        defer { collector.statistics = nil }
        return collector.statistics
    }
}
