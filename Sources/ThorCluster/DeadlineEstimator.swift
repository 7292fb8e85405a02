/// Request deadlines from measured exchange times: `max(floor, factor × p99)` of the
/// last `window` successful exchanges of the same operation kind, `initial` until
/// `minimumSamples` were seen. Liveness (heartbeats) catches dead and hung workers
/// much sooner; the deadline catches a worker that beats but never answers.
public struct DeadlineEstimator: Sendable {
    public var initial: Double = 120
    public var floor: Double = 5
    public var factor: Double = 10
    public var window = 128
    public var minimumSamples = 8
    private var samples: [String: [Double]] = [:]

    public init() {}

    /// The operation's kind: its name without layer or step numbers ("Forward layer 3" → "Forward").
    static func kind(_ operation: String) -> String { String(operation.split(separator: " ").first ?? "") }

    public mutating func record(_ operation: String, seconds: Double) {
        let k = Self.kind(operation)
        var s = samples[k, default: []]
        s.append(seconds)
        if s.count > window { s.removeFirst(s.count - window) }
        samples[k] = s
    }

    /// Seconds after which an unanswered request to a live worker is sent again:
    /// `max(retryFloor, retryFactor × p99)` once learned, `initialRetry` before.
    public var initialRetry: Double = 1
    public var retryFloor: Double = 0.5
    public var retryFactor: Double = 4

    public func retryAfter(for operation: String) -> Double {
        guard let s = samples[Self.kind(operation)], s.count >= minimumSamples else { return initialRetry }
        return max(retryFloor, retryFactor * s.max()!)
    }

    public func deadline(for operation: String) -> Double {
        guard let s = samples[Self.kind(operation)], s.count >= minimumSamples else { return initial }
        let sorted = s.sorted()
        let p99 = sorted[min(sorted.count - 1, Int((Double(sorted.count) * 0.99).rounded(.up)) - 1)]
        return max(floor, factor * p99)
    }
}
