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

    /// Seconds after which an unanswered request to a live worker is sent again, besides the time
    /// its bytes need on the link (`transferAllowance`) and as long as the worker's beats do not
    /// say it is serving it (`ResendClock`): `max(retryFloor, retryFactor × max)` once learned,
    /// `initialRetry` before.
    public var initialRetry: Double = 1
    public var retryFloor: Double = 0.5
    public var retryFactor: Double = 4

    public func retryAfter(for operation: String) -> Double {
        guard let s = samples[Self.kind(operation)], s.count >= minimumSamples else { return initialRetry }
        return max(retryFloor, retryFactor * s.max()!)
    }

    /// The link rate a resend allows for before transfers were measured (100 Mbit/s: slower than
    /// any link thor is run on, so a large request or reply is not sent again while it is still
    /// crossing the link; see `ResendClock`).
    public var assumedLinkBytesPerSecond: Double = 12.5e6
    /// Transfers smaller than this are not measured (their time is mostly latency).
    public var minimumMeasuredTransferBytes = 1 << 20
    private var transferRates: [Double] = []

    /// Records one request and its reply: `bytes` both ways in `seconds` (from sending the request
    /// to the reply's arrival, less the worker's own service time).
    public mutating func recordTransfer(bytes: Int, seconds: Double) {
        guard bytes >= minimumMeasuredTransferBytes, seconds > 0, seconds.isFinite else { return }
        transferRates.append(Double(bytes) / seconds)
        if transferRates.count > 32 { transferRates.removeFirst(transferRates.count - 32) }
    }

    /// The rate resends allow for: the slower of the assumed rate and the median of the last 32
    /// measured transfers (a median: one transfer slowed by a busy moment does not set it).
    public var linkBytesPerSecond: Double {
        guard !transferRates.isEmpty else { return assumedLinkBytesPerSecond }
        return min(assumedLinkBytesPerSecond, transferRates.sorted()[transferRates.count / 2])
    }

    /// Seconds `bytes` may take to cross the link (`linkBytesPerSecond`).
    public func transferAllowance(bytes: Int) -> Double { Double(max(0, bytes)) / linkBytesPerSecond }

    public func deadline(for operation: String) -> Double {
        guard let s = samples[Self.kind(operation)], s.count >= minimumSamples else { return initial }
        let sorted = s.sorted()
        let p99 = sorted[min(sorted.count - 1, Int((Double(sorted.count) * 0.99).rounded(.up)) - 1)]
        return max(floor, factor * p99)
    }
}
