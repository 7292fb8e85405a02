import ThorTensor

/// Every model the paper compares, selected by one configuration field
/// (`routing.variant`, SPEC §2 "Variants").
public enum RoutingVariant: String, CaseIterable, Sendable, Codable {
    /// No MoE layers: every FFN is dense.
    case dense
    /// Switch Transformer: top-1 over all experts, raw weight.
    case top1
    /// GShard: top-2 over all experts, renormalized weights.
    case top2
    /// Plain dynamic top-p over all experts (Huang et al. 2024), raw weights.
    case topp
    /// THOR with top-k selection (k = 2 by default).
    case thorTopK = "thor-topk"
    /// THOR with top-p selection.
    case thorTopP = "thor-topp"
    /// THOR without the task level: candidates = all experts (context gate kept).
    case noTaskLevel = "no-task-level"
    /// THOR without context: `h̃ = h`.
    case noContext = "no-context"
    /// THOR with `r = E_task[gold]` (the predictor is still trained by `L_task`).
    case gold
    /// THOR with `r = E_task[argmax P_task]`.
    case nonMixed = "non-mixed"
    /// `r` added to the routing input, `h̃ = g⊙h + (1−g)⊙c + r`, no task-level mask.
    case infuse
    /// Language/domain-hard routing: task `τ` uses experts `(τ·k + j) mod N`, weight `1/k`.
    case hard

    /// The task predictor, `E_task` and `L_task` exist.
    public var usesTaskPredictor: Bool {
        switch self {
        case .thorTopK, .thorTopP, .noContext, .gold, .nonMixed, .infuse: return true
        default: return false
        }
    }
    /// The task router restricts the token router to `K` candidates (and `L_task_lb` exists).
    public var usesTaskMask: Bool {
        switch self {
        case .thorTopK, .thorTopP, .noContext, .gold, .nonMixed: return true
        default: return false
        }
    }
    /// The context gate builds `h̃` from `h` and the context `c`.
    public var usesContextGate: Bool {
        switch self {
        case .thorTopK, .thorTopP, .noTaskLevel, .gold, .nonMixed, .infuse: return true
        default: return false
        }
    }
    /// A learned token router chooses experts (everything but dense and hard).
    public var usesTokenRouter: Bool { self != .dense && self != .hard }

    /// How the task representation `r` is formed.
    public var representation: TaskRepresentation {
        switch self {
        case .gold: return .gold
        case .nonMixed: return .argmax
        default: return .mixed
        }
    }

    /// Selection the variant fixes (nil: configurable through `routing.selection`).
    public var fixedSelection: SelectionRule? {
        switch self {
        case .top1, .top2, .thorTopK: return .topk
        case .topp, .thorTopP: return .topp
        default: return nil
        }
    }
    /// `k` the variant fixes.
    public var fixedK: Int? {
        switch self {
        case .top1: return 1
        case .top2: return 2
        default: return nil
        }
    }
}

/// How `r` is formed from the task predictor (SPEC §2.2 and the gold / non-mixed ablations).
public enum TaskRepresentation: String, Sendable, Codable {
    /// `r = Σ_τ P_task[τ] · E_task[τ]`.
    case mixed
    /// `r = E_task[gold]`.
    case gold
    /// `r = E_task[argmax P_task]`.
    case argmax
}

/// What is done to the context gate's output `h̃` before the token router reads it
/// (`routing.context_norm`; an ablation outside SPEC, docs/reproduction.md §11).
public enum ContextNormalization: String, CaseIterable, Sendable, Codable {
    /// SPEC §2.5 as written: the router reads `h̃`.
    case none
    /// `h̃` rescaled token by token to the length of the state: `h̃ · ‖h‖ / ‖h̃‖` (`ContextNorm`).
    case matchState = "match-state"
}

/// Expert selection from the token router's probabilities (SPEC §2.7).
public enum SelectionRule: String, CaseIterable, Sendable, Codable {
    case topk, topp
}

/// The `routing` section of a configuration file. Optional fields are resolved
/// from the variant (see the `resolved…` properties). Defaults: the property initializers.
public struct RoutingConfiguration: ConfigurationSection {
    public var variant: RoutingVariant = .thorTopP
    /// `N`, routed experts per MoE layer.
    public var experts: Int = 8
    /// `K`, task-level candidates (default `N/2`; only variants with the task-level mask use it).
    public var candidates: Int?
    /// Selection for the ablations (no-task-level, no-context, gold, non-mixed, infuse); default top-p.
    public var selection: SelectionRule?
    /// `k` for top-k selection and for hard routing (default 2; 1 for top1).
    public var k: Int?
    /// `p` for top-p selection.
    public var threshold: Float = 0.5
    /// Cap on `|S_t|` for top-p (nil: no cap).
    public var maxExperts: Int?
    /// Per-expert capacity factor in training (nil: dropless).
    public var capacityFactor: Float?
    /// MoE in layers `i` with `(i + 1) % moeEvery == 0` (2: layers 1, 3, 5).
    public var moeEvery: Int = 2
    /// Always-on shared experts per MoE layer (weight 1, coordinator side).
    public var sharedExperts: Int = 0
    /// Add `log q_e` to the token router's logits: the hierarchical product `p_e ∝ q_e · exp(z_e)`
    /// (SPEC §2.6). nil: the default, true for every variant with the task-level mask;
    /// `false` is the hard-mask ablation (the task level only restricts the candidates).
    public var taskPrior: Bool?
    /// `T`, number of tasks (0: taken from the training data).
    public var tasks: Int = 0
    /// What is done to `h̃` before the token router (only variants with the context gate):
    /// `none` (SPEC) or `match-state` (rescaled to `‖h‖`, an ablation).
    public var contextNorm: ContextNormalization = .none
    /// Warm-up of the task level: for the first `W` optimizer steps the task level is off in
    /// routing (every expert is a candidate, no `log q`, no `L_task_lb`: the steps route like
    /// `no-task-level`); from step `W + 1` on it routes as the variant says. 0 = off. The task
    /// predictor is trained by `L_task` throughout. Variants with the task-level mask only.
    public var taskWarmupSteps: Int = 0

    public init() {}

    /// The defaults with some fields replaced.
    public init(variant: RoutingVariant = RoutingConfiguration().variant, experts: Int = RoutingConfiguration().experts,
                candidates: Int? = nil, selection: SelectionRule? = nil, k: Int? = nil,
                threshold: Float = RoutingConfiguration().threshold, maxExperts: Int? = nil, capacityFactor: Float? = nil,
                moeEvery: Int = RoutingConfiguration().moeEvery, sharedExperts: Int = RoutingConfiguration().sharedExperts,
                taskPrior: Bool? = nil, tasks: Int = RoutingConfiguration().tasks,
                contextNorm: ContextNormalization = RoutingConfiguration().contextNorm) {
        self.variant = variant; self.experts = experts; self.candidates = candidates
        self.selection = selection; self.k = k; self.threshold = threshold; self.maxExperts = maxExperts
        self.capacityFactor = capacityFactor; self.moeEvery = moeEvery; self.sharedExperts = sharedExperts
        self.taskPrior = taskPrior; self.tasks = tasks; self.contextNorm = contextNorm
    }

    /// Candidates actually offered to the token router: `K` with the task mask, else `N`.
    public var resolvedCandidates: Int {
        variant.usesTaskMask ? (candidates ?? max(1, experts / 2)) : experts
    }
    /// Whether `log q` is added to the token router's logits: `task_prior`, by default true
    /// wherever the task-level mask exists (never without it).
    public var resolvedTaskPrior: Bool { variant.usesTaskMask && (taskPrior ?? true) }
    public var resolvedSelection: SelectionRule { variant.fixedSelection ?? selection ?? .topp }
    public var resolvedK: Int { variant.fixedK ?? k ?? 2 }

    /// Whether Transformer layer `index` (0-based, in either stack) is an MoE layer.
    public func isMoELayer(_ index: Int) -> Bool {
        variant != .dense && (index + 1) % moeEvery == 0
    }

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case variant, experts, candidates, selection, k, threshold, maxExperts = "max_experts"
        case capacityFactor = "capacity_factor", moeEvery = "moe_every", sharedExperts = "shared_experts"
        case taskPrior = "task_prior", tasks, contextNorm = "context_norm"
        case taskWarmupSteps = "task_warmup_steps"
    }

    /// Checks every value; errors name the key (`routing.k`) and the allowed range.
    public func validate(path: String = "routing") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        let n = experts
        try Check.require(n >= 1, p(.experts), "must be ≥ 1, got \(n)")
        if let c = candidates {
            try Check.require(c >= 1 && c <= n, p(.candidates), "must be in 1…experts (\(n)), got \(c)")
        }
        if let s = selection, let fixed = variant.fixedSelection, s != fixed {
            throw ConfigurationError(path: p(.selection),
                message: "variant \(variant.rawValue) always uses \(fixed.rawValue); omit the key or set it to \(fixed.rawValue)")
        }
        if let k, let fixed = variant.fixedK, k != fixed {
            throw ConfigurationError(path: p(.k), message: "variant \(variant.rawValue) always uses k = \(fixed); omit the key or set it to \(fixed)")
        }
        let kk = resolvedK
        try Check.require(kk >= 1, p(.k), "must be ≥ 1, got \(kk)")
        let kMatters = k != nil || variant == .hard || resolvedSelection == .topk
        if variant.usesTaskMask && kMatters {
            let c = resolvedCandidates
            try Check.require(kk <= c, p(.k), "must be ≤ candidates K (\(c)), got \(kk)")
        } else if kMatters {
            try Check.require(kk <= n, p(.k), "must be ≤ experts N (\(n)), got \(kk)")
        }
        try Check.require(threshold > 0 && threshold <= 1, p(.threshold), "must be in (0, 1], got \(threshold)")
        if let m = maxExperts { try Check.require(m >= 1, p(.maxExperts), "must be ≥ 1 (or null for no cap), got \(m)") }
        if let cf = capacityFactor {
            try Check.require(cf > 0 && cf.isFinite, p(.capacityFactor), "must be > 0 (or null for dropless), got \(cf)")
        }
        try Check.require(moeEvery >= 1, p(.moeEvery), "must be ≥ 1 (1: every layer, 2: every other layer), got \(moeEvery)")
        try Check.require(sharedExperts >= 0, p(.sharedExperts), "must be ≥ 0, got \(sharedExperts)")
        try Check.require(tasks >= 0, p(.tasks), "must be ≥ 0 (0: from the training data), got \(tasks)")
        try Check.require(taskWarmupSteps >= 0, p(.taskWarmupSteps), "must be ≥ 0 (0: no warm-up), got \(taskWarmupSteps)")
        if taskWarmupSteps > 0 {
            try Check.require(variant.usesTaskMask, p(.taskWarmupSteps),
                              "needs a variant with the task-level mask (thor-topk, thor-topp, no-context, gold, non-mixed), variant is \(variant.rawValue); set it to 0")
        }
        if taskPrior == true {
            try Check.require(variant.usesTaskMask, p(.taskPrior),
                              "needs a variant with the task-level mask (thor-topk, thor-topp, no-context, gold, non-mixed), variant is \(variant.rawValue)")
        }
        if contextNorm != .none {
            try Check.require(variant.usesContextGate, p(.contextNorm),
                              "\(contextNorm.rawValue) needs a variant with the context gate (thor-topk, thor-topp, no-task-level, gold, non-mixed, infuse), variant is \(variant.rawValue); omit the key or set it to none")
        }
    }
}
