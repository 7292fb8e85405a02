import ThorTensor
import ThorExperts

/// Auxiliary loss values of one MoE layer's last training forward (unweighted; nil when the
/// variant has no such loss).
public struct LayerLosses: Sendable, Equatable {
    public var taskBalance: Double?
    public var tokenBalance: Double?
    public var dynamic: Double?
    public init(taskBalance: Double? = nil, tokenBalance: Double? = nil, dynamic: Double? = nil) {
        self.taskBalance = taskBalance; self.tokenBalance = tokenBalance; self.dynamic = dynamic
    }
}

/// A THOR-MoE FFN sub-block (SPEC §2): both routing levels, expert selection, dispatch to
/// an `ExpertBackend`, combine in ascending expert id, shared experts, and the gradients of
/// its weighted auxiliary losses. Every variant of `RoutingVariant` except `dense` runs here.
///
/// Task-predictor variants read the task representation `r` from `layout.taskRepresentation`
/// (the model's task level computes it once per pass) and return `∂L/∂r` from `backward`;
/// no MoE layer depends on another's state or call order. The sections of the pass live in
/// `MoELayer+TaskRouting.swift`, `MoELayer+Context.swift`, `MoELayer+TokenRouting.swift` and
/// `MoELayer+Combine.swift`.
public final class MoELayer: FeedForwardSublayer {
    public let name: String
    /// MoE-layer ordinal (`ExpertKey.layer`): encoder MoE layers first, then decoder ones.
    public let ordinal: Int
    public let side: Side
    public let modelDim: Int
    public let routing: RoutingConfiguration
    public let lossWeights: LossConfiguration
    /// `1 / (number of MoE layers)`: per-layer losses are averaged over the MoE layers.
    public let lossScale: Float
    /// What this pass's auxiliary losses count for in the step's objective when the step runs in
    /// micro-batches (docs/data-parallel.md); (1, 1) for a whole batch. `tokens`: the pass's share of
    /// the step's non-pad tokens of this layer (`L_dyn` is a mean over the whole batch's tokens);
    /// `batch`: the weight of its balance losses (1/C: computed over the micro-batch, averaged over the C).
    public var microBatchShare: (tokens: Float, batch: Float) = (1, 1)
    public let backend: ExpertBackend
    public let taskRouter: TaskRouter?
    public let gate: ContextGate?
    public let router: TokenRouter?
    public let sharedExperts: [DenseFeedForward]
    /// Where routing statistics go while collection is on.
    public let collector: RoutingStatisticsCollector?
    /// Where the pass's sections are timed (routing, gather, experts, combine; nil: not timed).
    public var phaseTimer: PhaseTimer?
    /// Whether the task level routes (restricts the candidates, adds `log q`, has `L_task_lb`);
    /// false during `routing.task_warmup_steps` (`MoEStack.activateTaskLevel(afterSteps:)`).
    public var taskLevelActive = true

    /// Loss values of the last training forward.
    public private(set) var lastLosses = LayerLosses()
    /// Selection of the last forward (any mode).
    public private(set) var lastDecision: RoutingDecision?
    /// Token router probabilities `p` [rows, N] of the last forward.
    public private(set) var lastProbabilities: Tensor?
    /// Task routing (q, C) of the last forward.
    public private(set) var lastTaskRouting: TaskRouting?

    /// What a training forward keeps for backward.
    struct Cache {
        let x: Tensor, mask: Tensor, batch: Int, length: Int
        /// Prefix rows per sentence of a prefix-LM pass (0 otherwise).
        let prefixLength: Int
        let r: Tensor?, taskRouting: TaskRouting?
        let context: GatedContext?
        let p: Tensor?, decision: RoutingDecision
        let combine: CombinedExperts
    }
    private var cache: Cache?

    /// `routing` must be validated. Parameters are named `name.task_router.w`, `name.gate.{w,b}`,
    /// `name.router.w`, `name.shared.i.*`; their initial values derive from `rng`.
    public init(name: String, ordinal: Int, side: Side, modelDim d: Int, hiddenDim: Int, activation: Activation,
                routing: RoutingConfiguration, losses: LossConfiguration, moeLayerCount: Int,
                backend: ExpertBackend, collector: RoutingStatisticsCollector? = nil, rng: inout RandomGenerator) {
        let v = routing.variant
        precondition(v != .dense, "the dense variant has no MoE layers")
        self.name = name; self.ordinal = ordinal; self.side = side; modelDim = d
        self.routing = routing; lossWeights = losses; lossScale = 1 / Float(max(1, moeLayerCount))
        self.backend = backend
        self.collector = collector
        let n = routing.experts
        taskRouter = v.usesTaskMask
            ? TaskRouter(name: "\(name).task_router", dim: d, experts: n, candidates: routing.resolvedCandidates, rng: &rng) : nil
        gate = v.usesContextGate ? ContextGate(name: "\(name).gate", dim: d, rng: &rng) : nil
        router = v.usesTokenRouter ? TokenRouter(name: "\(name).router", dim: d, experts: n, rng: &rng) : nil
        sharedExperts = (0..<routing.sharedExperts).map {
            DenseFeedForward(name: "\(name).shared.\($0)", modelDim: d, hiddenDim: hiddenDim, activation: activation, rng: &rng)
        }
    }

    /// Coordinator-side parameters: task router, gate, router, shared experts.
    public var parameters: [Parameter] {
        var p: [Parameter] = []
        if let taskRouter { p += taskRouter.parameters }
        if let gate { p += gate.parameters }
        if let router { p += router.parameters }
        for s in sharedExperts { p += s.parameters }
        return p
    }

    /// A fresh decoding state (the running prefix sum of the decoder context) for `batchSize` hypotheses.
    public func makeIncrementalState(batchSize: Int) -> IncrementalState? {
        MoEDecodingState(batchSize: batchSize, modelDim: modelDim)
    }

    /// `x` [rows, d] → `y` [rows, d]. Task-predictor variants need `layout.taskRepresentation` [B, d];
    /// incremental decoder steps need a `MoEDecodingState` from `makeIncrementalState` in `layout.state`.
    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        let d = modelDim, nRows = layout.rows
        guard x.rows == nRows, x.columns == d else {
            throw MoEError.wrongShape("\(name): input \(x.shape), layout has \(nRows) rows of width \(d)")
        }
        let prefixPass = layout.prefixLength > 0 && layout.prefixLength == layout.length
        if layout.isIncremental && (training || side == .encoder || (layout.length != 1 && !prefixPass)) {
            throw MoEError.wrongShape("\(name): incremental steps are decoder-only, one position per sentence (or a prefix-LM prefix pass), not training")
        }
        guard layout.prefixLength >= 0, layout.prefixLength <= layout.length, layout.prefixLength == 0 || side == .decoder else {
            throw MoEError.wrongShape("\(name): prefix length \(layout.prefixLength) for \(layout.length) positions on the \(side.rawValue) side")
        }
        let mask = Tensor(shape: [nRows], values: layout.mask)
        let mp = UnsafePointer(mask.pointer)

        let routingStart = MonotonicClock.seconds()
        // Task level: r [B, d] (given), q and the candidates
        let r = try taskRepresentation(layout)
        let taskRouting = routeTasks(r)
        // Context and gate: h̃ [n, d]
        let context = try gateContext(x, layout: layout, mask: mp, r: r)
        // Token router and selection
        let (p, decision) = try routeTokens(x, context: context, taskRouting: taskRouting, layout: layout, mask: mp)
        if training, let cf = routing.capacityFactor { Selection.applyCapacity(decision, factor: cf, experts: routing.experts) }
        // Loss values (gradients are applied in backward)
        if training { lastLosses = auxiliaryLosses(taskRouting: taskRouting, p: p, decision: decision, mask: mp) }
        phaseTimer?.add(.routing, since: routingStart)
        // Dispatch, experts, combine in ascending expert id
        let combine = try dispatchAndCombine(x, decision: decision, layout: layout, training: training)

        collector?.statistics?.record(layer: ordinal, decision: decision, mask: layout.mask, length: layout.length,
                                      labels: layout.taskLabels)
        lastDecision = decision; lastProbabilities = p; lastTaskRouting = taskRouting
        cache = training ? Cache(x: x, mask: mask, batch: layout.batchSize, length: layout.length,
                                 prefixLength: layout.prefixLength, r: r,
                                 taskRouting: taskRouting, context: context, p: p, decision: decision,
                                 combine: combine) : nil
        return combine.output
    }

    /// `∂L/∂y` → `∂L/∂x` and (task-predictor variants) `∂L/∂r` of this layer, including its
    /// weighted auxiliary losses.
    public func backward(_ gradOutput: Tensor) throws -> SublayerGradients {
        guard let k = cache else { throw MoEError.noPendingForward(name) }
        let d = modelDim, nRows = k.x.rows
        guard gradOutput.rows == nRows, gradOutput.columns == d else {
            throw MoEError.wrongShape("\(name): gradient \(gradOutput.shape) for output [\(nRows), \(d)]")
        }
        cache = nil
        let mp = UnsafePointer(k.mask.pointer)

        // Experts and shared experts: ∂L/∂x through them, ∂L/∂w per slot
        let (dx, dw) = try backwardThroughExperts(gradOutput, cache: k)
        let routingStart = MonotonicClock.seconds()
        defer { phaseTimer?.add(.routingBackward, since: routingStart) }

        let dr: Tensor? = k.r.map { Tensor(shape: $0.shape) }
        if let router, let p = k.p {
            // Token router: ∂L/∂p from the combine weights and the auxiliary losses, ∂L/∂log q, ∂L/∂h̃
            let (dz, dLogQ) = backwardTokenRouting(p: p, dw: dw, cache: k, mask: mp)
            let dht = router.backward(dz: dz, ht: (k.context?.ht ?? k.x).pointer, dim: d)
            // Context and gate: ∂L/∂h, ∂L/∂c into dx (and ∂L/∂r for infuse)
            backwardGate(dht, cache: k, mask: mp, dx: dx, dr: dr)
            // Task router: ∂L/∂r from log q and L_task_lb
            backwardTaskRouting(dLogQ: dLogQ, cache: k, dr: dr)
        }
        return SublayerGradients(input: dx, taskRepresentation: dr)
    }
}
