import ThorWire

/// One forward or backward exchange as the coordinator saw it, on its monotonic clock
/// (`ClusterCoordinator.traces`; `thor bench distributed` builds its timeline from these).
public struct ExchangeTrace: Sendable {
    /// One reply: when its request went out, when its frames came out of the socket, and what
    /// the worker says it spent on it.
    public struct Reply: Sendable {
        public var worker: String
        /// Monotonic seconds: the request first handed to libzmq (a resent request keeps its first time).
        public var sentAt: Double
        /// Monotonic seconds: the reply's frames received by the coordinator (before decoding).
        public var arrivedAt: Double
        /// The coordinator's decode of the reply.
        public var decodeSeconds: Double
        /// The worker's own decode, queue, compute and encode of the request (nil: not reported).
        public var timings: WorkerTimings?

        /// The worker's whole service time (decode + queue + compute + encode; 0 without timings).
        public var servedSeconds: Double {
            timings.map { $0.decode + $0.queue + $0.compute + $0.encode } ?? 0
        }
        /// From sending to arrival, less the worker's service: both transfers over the transport
        /// and every thread hand-off on the way (libzmq I/O threads, the worker's I/O thread).
        public var transferSeconds: Double { arrivedAt - sentAt - servedSeconds }
    }

    public var operation: String
    public var phase: FaultPhase
    /// Monotonic seconds: the exchange began (before its first request was encoded).
    public var started: Double
    /// Monotonic seconds: every request had been handed to libzmq.
    public var sent: Double
    /// Monotonic seconds: the last reply was decoded (the exchange returned).
    public var finished: Double
    /// Replies in arrival order.
    public var replies: [Reply]
    /// Requests of this exchange sent again (`ClusterCoordinator.onResend`).
    public var resends: Int

    public init(operation: String, phase: FaultPhase, started: Double, sent: Double, finished: Double, replies: [Reply],
                resends: Int = 0) {
        self.operation = operation; self.phase = phase; self.started = started; self.sent = sent
        self.finished = finished; self.replies = replies; self.resends = resends
    }

    /// The reply that came last (the one the exchange waited for).
    public var last: Reply? { replies.max { $0.arrivedAt < $1.arrivedAt } }
}
