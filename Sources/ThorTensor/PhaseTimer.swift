/// The phases of a training step the coordinator times (`PhaseTimer`). Forward and backward
/// have the same sections; the gradient norm and the optimizer step are timed whole.
/// `names` are the keys of metrics.jsonl's `phase_s` and the Prometheus `phase` label.
public enum Phase: Int, CaseIterable, Sendable {
    /// Everything of the pass not listed below: embeddings, attention, layer norms, dense
    /// FFNs, the loss (the pass's wall time minus the other sections).
    case attention
    /// Task level (task representation, task router) and token routing (context gate,
    /// token router, selection, auxiliary losses); in backward, their gradients.
    case routing
    /// Gathering each expert's token rows (backward: the weighted output gradients).
    case gather
    /// The expert backend's call: in-process compute, or the exchange with the workers
    /// (`encode`, `send`, `wait` and `decode` are parts of it) and its bookkeeping.
    case experts
    /// Packing requests (`WireCodec.encode`).
    case encode
    /// Handing frames to ZeroMQ.
    case send
    /// Waiting for replies (wire, the workers' queue, decode, compute and encode, imbalance).
    case wait
    /// Unpacking replies into tensors.
    case decode
    /// Combining expert outputs (`Σ w·E(h)`) and shared experts (backward: scattering `∂L/∂h`).
    case combine
    case attentionBackward, routingBackward, gatherBackward, expertsBackward, encodeBackward, sendBackward
    case waitBackward, decodeBackward, combineBackward
    /// Global gradient norm: coordinator parameters and the experts' norms (exchange included).
    case gradientNorm
    /// Experts' optimizer step (exchange included) and the coordinator's Adam.
    case optimizer

    public var name: String {
        switch self {
        case .attention: return "attention"
        case .routing: return "routing"
        case .gather: return "gather"
        case .experts: return "experts"
        case .encode: return "encode"
        case .send: return "send"
        case .wait: return "wait"
        case .decode: return "decode"
        case .combine: return "combine"
        case .attentionBackward: return "attention_backward"
        case .routingBackward: return "routing_backward"
        case .gatherBackward: return "gather_backward"
        case .expertsBackward: return "experts_backward"
        case .encodeBackward: return "encode_backward"
        case .sendBackward: return "send_backward"
        case .waitBackward: return "wait_backward"
        case .decodeBackward: return "decode_backward"
        case .combineBackward: return "combine_backward"
        case .gradientNorm: return "grad_norm"
        case .optimizer: return "optimizer"
        }
    }

    /// The backward counterpart of a forward section (itself for the others).
    public var backward: Phase {
        rawValue <= Phase.combine.rawValue ? Phase(rawValue: rawValue + Phase.attentionBackward.rawValue)! : self
    }

    /// The forward sections measured inside a pass that, with the `attention` residual, add up
    /// to the pass (`encode`…`decode` are parts of `experts`).
    public static let forwardSections: [Phase] = [.routing, .gather, .experts, .combine]
}

/// Running totals of seconds per `Phase` (never reset: a reader keeps the totals it saw last
/// and subtracts). One clock read per section boundary, no allocation: cheap enough to stay
/// on. Not thread-safe: the coordinator's training thread records, others read a copy
/// (`totals`) handed over by that thread.
public final class PhaseTimer: @unchecked Sendable {
    /// Fixed storage: reading `totals` never makes a later `add` copy (no allocation per step).
    private let seconds: UnsafeMutablePointer<Double>
    /// Recording on (default); off, `add` does nothing.
    public var isEnabled = true

    public init() {
        seconds = .allocate(capacity: Phase.allCases.count)
        seconds.initialize(repeating: 0, count: Phase.allCases.count)
    }

    deinit { seconds.deallocate() }

    /// Adds `s` seconds to `phase`.
    @inline(__always) public func add(_ phase: Phase, _ s: Double) {
        if isEnabled { seconds[phase.rawValue] += s }
    }

    /// Adds the seconds since `start` (a `MonotonicClock.seconds()` reading) to `phase`; returns now.
    @inline(__always) @discardableResult
    public func add(_ phase: Phase, since start: Double) -> Double {
        let now = MonotonicClock.seconds()
        if isEnabled { seconds[phase.rawValue] += now - start }
        return now
    }

    public subscript(phase: Phase) -> Double { seconds[phase.rawValue] }

    /// A copy of the running totals.
    public var totals: PhaseTotals { PhaseTotals(seconds: Array(UnsafeBufferPointer(start: seconds, count: Phase.allCases.count))) }
}

/// Seconds per phase (a `PhaseTimer`'s totals, or a window of them).
public struct PhaseTotals: Sendable, Equatable {
    public var seconds: [Double]
    public init(seconds: [Double] = [Double](repeating: 0, count: Phase.allCases.count)) { self.seconds = seconds }
    public subscript(phase: Phase) -> Double { seconds[phase.rawValue] }
    public static func - (a: PhaseTotals, b: PhaseTotals) -> PhaseTotals {
        PhaseTotals(seconds: zip(a.seconds, b.seconds).map { $0 - $1 })
    }
    /// Name → seconds.
    public var byName: [String: Double] {
        Dictionary(uniqueKeysWithValues: Phase.allCases.map { ($0.name, seconds[$0.rawValue]) })
    }
}
