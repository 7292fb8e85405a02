import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport

/// Where the coordinator's time and bytes went (for `thor bench distributed`).
public struct TransportCounters: Sendable, Equatable {
    /// Packing requests and handing them to libzmq.
    public var encodeSeconds: Double = 0
    /// Waiting for replies (network + worker compute).
    public var waitSeconds: Double = 0
    /// Unpacking replies into tensors.
    public var decodeSeconds: Double = 0
    public var bytesSent: Int = 0
    public var bytesReceived: Int = 0
    public var requests: Int = 0
    public init() {}
}

/// The coordinator's end of the cluster: a ROUTER socket the workers' DEALERs
/// connect to, the registry of workers, and request/reply exchanges with
/// deadlines. Use from one thread.
public final class ClusterCoordinator {
    public let context: ZMQContext
    private let socket: Socket
    /// The bound endpoint (with the real port for `tcp://…:*`).
    public let endpoint: String
    /// This coordinator's incarnation, sent in every envelope.
    public let session: UInt64
    /// Replies above this size are rejected.
    public var maxFrameBytes: Int
    /// Registered workers by id, and their ids in registration order.
    public private(set) var registrations: [String: Registration] = [:]
    public private(set) var workerIDs: [String] = []
    /// Time and bytes of every exchange so far.
    public var counters = TransportCounters()
    /// Called for each newly registered worker.
    public var onRegistration: ((Registration) -> Void)?
    private var nextRequestID: UInt64 = 1

    /// Binds a ROUTER at `endpoint` (`tcp://127.0.0.1:*` picks a free port).
    public init(bind endpoint: String, maxFrameBytes: Int = WireCodec.defaultMaxFrameBytes) throws {
        do {
            context = try ZMQContext()
            socket = try Socket(context: context, type: .router)
            try socket.setRouterMandatory(true)
            try socket.setHighWaterMarks(send: 0, receive: 0)
            try socket.bind(endpoint)
            self.endpoint = try socket.lastEndpoint()
        } catch let e as ZMQError {
            throw ClusterError.transport(e.description)
        }
        self.maxFrameBytes = maxFrameBytes
        var rng = SystemRandomNumberGenerator()
        session = rng.next()
    }

    deinit { socket.close() }

    /// Waits until `count` workers have registered; throws naming how many did
    /// within `timeout` seconds. `check` runs between polls (e.g. to notice dead children).
    public func waitForWorkers(count: Int, timeout: Double, check: () throws -> Void = {}) throws {
        let deadline = monotonicSeconds() + timeout
        while workerIDs.count < count {
            try check()
            let left = deadline - monotonicSeconds()
            guard left > 0 else {
                throw ClusterError.timeout(operation: "registration (\(workerIDs.count) of \(count) registered: \(workerIDs.joined(separator: ", ")))",
                                           workers: ["<unregistered>"], seconds: timeout)
            }
            _ = try receiveOne(timeout: min(left, 0.05), pending: [:])
        }
    }

    /// Sends every request (at most one per worker matters for ordering only in
    /// the reply list), then gathers all replies within `timeout` seconds.
    /// Returns the replies in request order. Error replies become `ClusterError.remote`
    /// (the first one in request order, after all replies arrived).
    public func exchange(_ requests: [(worker: String, message: WireMessage)], operation: String,
                         timeout: Double, dtype: WireDType = .f32) throws -> [WireMessage] {
        if requests.isEmpty { return [] }
        var pending: [UInt64: Int] = [:]
        var t0 = monotonicSeconds()
        for (i, r) in requests.enumerated() {
            guard registrations[r.worker] != nil else { throw ClusterError.unknownWorker(r.worker) }
            let id = nextRequestID
            nextRequestID += 1
            let frame = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: session, message: r.message),
                                         dtype: dtype)
            counters.bytesSent += frame.count
            do {
                try socket.send([Frame(r.worker), Frame(adoptingMalloced: frame.take(), count: frame.count)])
            } catch let e as ZMQError {
                throw ClusterError.transport("sending \(operation) to worker \(r.worker): \(e)")
            }
            pending[id] = i
        }
        counters.requests += requests.count
        counters.encodeSeconds += monotonicSeconds() - t0
        t0 = monotonicSeconds()
        var replies = [WireMessage?](repeating: nil, count: requests.count)
        let deadline = t0 + timeout
        var decodeSeconds = 0.0
        let waitStart = t0
        defer {
            counters.waitSeconds += monotonicSeconds() - waitStart - decodeSeconds
            counters.decodeSeconds += decodeSeconds
        }
        while !pending.isEmpty {
            let left = deadline - monotonicSeconds()
            guard left > 0 else {
                let missing = pending.values.sorted().map { requests[$0].worker }
                throw ClusterError.timeout(operation: operation, workers: missing, seconds: timeout)
            }
            guard let (id, worker, message, seconds) = try receiveOne(timeout: left, pending: pending) else { continue }
            decodeSeconds += seconds
            let i = pending[id]!
            guard worker == requests[i].worker else {
                throw ClusterError.unexpectedReply(worker: worker, operation: operation,
                                                   detail: "reply to request \(id), which was sent to \(requests[i].worker)")
            }
            pending[id] = nil
            replies[i] = message
        }
        for (i, r) in replies.enumerated() {
            if case .error(let code, let message)? = r {
                throw ClusterError.remote(worker: requests[i].worker, operation: operation, code: code, message: message)
            }
        }
        return replies.map { $0! }
    }

    /// Receives one frame: registrations are recorded; replies to `pending` ids
    /// are returned with their decode time; anything else is dropped.
    private func receiveOne(timeout: Double, pending: [UInt64: Int]) throws -> (UInt64, String, WireMessage, Double)? {
        let frames: [Frame]
        do {
            guard let f = try socket.receive(timeout: timeout) else { return nil }
            frames = f
        } catch let e as ZMQError {
            throw ClusterError.transport("receive: \(e)")
        }
        guard frames.count == 2 else { return nil }  // not a thor worker
        let worker = frames[0].string
        counters.bytesReceived += frames[1].count
        let t0 = monotonicSeconds()
        guard let envelope = try? frames[1].withUnsafeBytes({ try WireCodec.decode($0, maxFrameBytes: maxFrameBytes) }) else { return nil }
        let seconds = monotonicSeconds() - t0
        if case .register(let r) = envelope.message {
            guard r.workerID == worker else { return nil }
            if registrations[worker] == nil {
                workerIDs.append(worker)
                registrations[worker] = r
                onRegistration?(r)
            } else {
                registrations[worker] = r
            }
            return nil
        }
        guard pending[envelope.requestID] != nil else { return nil }  // stale or duplicate
        return (envelope.requestID, worker, envelope.message, seconds)
    }

    /// Sends a Heartbeat to every registered worker at once and waits for all echoes;
    /// returns, per worker, the seconds until all had answered (an upper bound on its
    /// round trip). Throws `ClusterError.timeout` naming the workers that did not answer.
    public func heartbeat(timeout: Double) throws -> [String: Double] {
        var result: [String: Double] = [:]
        let start = monotonicSeconds()
        let ids = workerIDs
        let replies = try exchange(ids.enumerated().map { (worker: $1, message: .heartbeat(sequence: UInt64($0), sentUnixNanos: unixNanoseconds())) },
                                   operation: "Heartbeat", timeout: timeout)
        let elapsed = monotonicSeconds() - start
        for (i, (id, r)) in zip(ids, replies).enumerated() {
            guard case .heartbeat(let seq, _) = r, seq == UInt64(i) else {
                throw ClusterError.unexpectedReply(worker: id, operation: "Heartbeat", detail: "got \(r.name)")
            }
            result[id] = elapsed
        }
        return result
    }

    /// Asks every registered worker to exit; waits up to `timeout` seconds for their Acks.
    public func shutdownWorkers(reason: String, timeout: Double = 2) {
        let requests = workerIDs.map { (worker: $0, message: WireMessage.shutdown(reason: reason)) }
        _ = try? exchange(requests, operation: "Shutdown", timeout: timeout)
    }
}
