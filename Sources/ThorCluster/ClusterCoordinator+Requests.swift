import ThorExperts
import ThorWire

extension ClusterCoordinator {
    /// Sends every request, then gathers all replies. Returns the replies in request
    /// order. Error replies become `ClusterError.remote` (the first one in request order,
    /// after all replies arrived); a worker that misses the deadline, stops beating or
    /// exits makes it throw (`.timeout` for the deadline, `.workerLost` otherwise).
    public func exchange(_ requests: [(worker: String, message: WireMessage)], operation: String,
                         timeout: Double, dtype: WireDType = .f32) throws -> [WireMessage] {
        for r in requests where registrations[r.worker] == nil { throw ClusterError.unknownWorker(r.worker) }
        let outcomes = try exchangeTolerant(requests, operation: operation, timeout: timeout, dtype: dtype)
        var timedOut: [String] = []
        for (i, o) in outcomes.enumerated() {
            if case .lost(let reason) = o {
                if reason.hasPrefix(Self.deadlineReason) { timedOut.append(requests[i].worker); continue }
                throw ClusterError.workerLost(worker: requests[i].worker, operation: operation, reason: reason)
            }
        }
        if !timedOut.isEmpty { throw ClusterError.timeout(operation: operation, workers: timedOut, seconds: timeout) }
        for (i, o) in outcomes.enumerated() {
            if case .error(let code, let message)? = o.message {
                throw ClusterError.remote(worker: requests[i].worker, operation: operation, code: code, message: message)
            }
        }
        return outcomes.map { $0.message! }
    }

    static let deadlineReason = "no reply within the deadline"

    /// The shard an Envelope carrying `message` names: `shard` on Forward and Backward, unless it is the whole batch.
    public static func shard(of message: WireMessage, _ shard: Shard) -> Shard? {
        switch message {
        case .forward, .backward: return shard == .whole ? nil : shard
        default: return nil
        }
    }

    /// Sends a Heartbeat to every live registered worker at once and waits for all echoes;
    /// returns, per worker, the seconds until all had answered (an upper bound on its
    /// round trip). Throws naming the workers that did not answer.
    public func heartbeat(timeout: Double) throws -> [String: Double] {
        var result: [String: Double] = [:]
        let start = monotonicSeconds()
        let ids = liveWorkerIDs.filter { isAlive($0) }
        let replies = try exchange(ids.enumerated().map { (worker: $1, message: .heartbeat(sequence: UInt64($0 + 1), sentUnixNanos: unixNanoseconds())) },
                                   operation: "Heartbeat", timeout: timeout)
        let elapsed = monotonicSeconds() - start
        for (i, (id, r)) in zip(ids, replies).enumerated() {
            guard case .heartbeat(let seq, _) = r, seq == UInt64(i + 1) else {
                throw ClusterError.unexpectedReply(worker: id, operation: "Heartbeat", detail: "got \(r.name)")
            }
            result[id] = elapsed
        }
        return result
    }

    /// Asks every live registered worker to exit; waits up to `timeout` seconds for their Acks.
    public func shutdownWorkers(reason: String, timeout: Double = 2) {
        let requests = liveWorkerIDs.map { (worker: $0, message: WireMessage.shutdown(reason: reason)) }
        _ = try? exchangeTolerant(requests, operation: "Shutdown", timeout: timeout)
    }
}
