import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import CZMQ
#if canImport(Glibc)
import Glibc
#endif

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
    /// Requests sent again (`ClusterCoordinator.onResend` says to whom and why).
    public var resends: Int = 0
    public init() {}
}

/// One worker's own timings summed over its replies (running totals; see `WorkerTimings`).
public struct WorkerTotals: Sendable, Equatable {
    public var timings = WorkerTimings()
    /// Replies received from it, and how many of them carried timings.
    public var replies = 0
    public var timedReplies = 0
    public init() {}

    public static func - (a: WorkerTotals, b: WorkerTotals) -> WorkerTotals {
        var d = WorkerTotals()
        d.timings = a.timings - b.timings
        d.replies = a.replies - b.replies
        d.timedReplies = a.timedReplies - b.timedReplies
        return d
    }
}

/// What became of one request of a fault-tolerant exchange.
public enum ExchangeOutcome {
    /// The worker's reply (possibly an `Error` reply).
    case reply(WireMessage)
    /// The worker was declared dead before it answered (the reason says why).
    case lost(String)

    public var message: WireMessage? { if case .reply(let m) = self { return m } else { return nil } }
}

/// A worker the coordinator declared dead.
public struct WorkerLoss: Sendable, Equatable {
    public var worker: String
    public var reason: String
    /// Seconds from its last sign of life (a reply or a beat) to the moment it was declared dead.
    public var silentSeconds: Double
    /// Monotonic time it was declared dead.
    public var declaredAt: Double
}

/// The coordinator's end of the cluster: a ROUTER socket the workers' DEALERs
/// connect to, the registry of workers, their liveness, and request/reply
/// exchanges with deadlines. Use from one thread.
///
/// Liveness (the ZeroMQ guide's Paranoid Pirate): every worker sends a beat every
/// `heartbeatInterval` also while it computes; while the coordinator waits for
/// replies it beats to the workers it waits on, and declares a worker dead after
/// `heartbeatLiveness` silent intervals, when its process exited (`childWatch`),
/// when it is unreachable, or when it misses the request's deadline.
public final class ClusterCoordinator {
    public let context: ZMQContext
    private let socket: Socket
    /// Admits workers by public key when the links are CURVE-secured (nil: unsecured links).
    public let zap: ZAPHandler?
    /// The bound endpoint (with the real port for `tcp://…:*`).
    public let endpoint: String
    /// This coordinator's incarnation, sent in every envelope.
    public let session: UInt64
    /// Replies above this size are rejected.
    public var maxFrameBytes: Int
    /// Registered workers by id (latest incarnation), and their ids in registration order.
    public private(set) var registrations: [String: Registration] = [:]
    public private(set) var workerIDs: [String] = []
    /// Time and bytes of every exchange so far.
    public var counters = TransportCounters()
    /// Shared-memory links to workers on this host (protocol 5; `enabled = false` declines every offer).
    public let sharedLinks = SharedLinks()
    /// Where forward and backward exchanges record encode / send / wait / decode (nil: nowhere).
    public var phaseTimer: PhaseTimer?
    /// Forward and backward exchanges are appended here while it is not nil (`ExchangeTrace`).
    public var traces: [ExchangeTrace]?
    /// Each worker's own timings (carried by its replies), summed since the coordinator started.
    public private(set) var workerTotals: [String: WorkerTotals] = [:]
    /// Called for each newly registered worker (and each new incarnation of one).
    public var onRegistration: ((Registration) -> Void)?
    /// Called when a worker is declared dead.
    public var onLoss: ((WorkerLoss) -> Void)?
    /// Called with a refusal message (e.g. a duplicate worker id).
    public var onRefusal: ((String) -> Void)?
    /// Seconds between beats; a worker silent for `heartbeatLiveness` intervals is dead.
    public var heartbeatInterval: Double = 0.25
    public var heartbeatLiveness: Int = 3
    /// Workers whose process is known to have exited (set by `LocalCluster`): checked while waiting.
    public var childWatch: (() -> [(worker: String, reason: String)])?
    /// Request deadlines learned from measured exchange times.
    public var deadlines = DeadlineEstimator()
    /// The seam for a fault injector: consulted before each request is sent (off when nil).
    public var faultHook: ((FaultPoint) -> FaultAction)?
    /// Called when a request is sent again (worker, operation, why): unanswered past
    /// `DeadlineEstimator.retryAfter`, or refused by the worker as undecodable.
    public var onResend: ((String, String, String) -> Void)?
    /// Called when a worker refused a frame as undecodable (worker, operation).
    public var onRefusedFrame: ((String, String) -> Void)?
    /// Times one request is sent again before only liveness and the deadline judge it.
    public var maxResends = 3
    /// Links cut by a partition (`InjectedPartitions`): worker → monotonic time the cut heals.
    /// Nothing is sent to such a worker and nothing from it is read.
    public var cutLinks: [String: Double] = [:]
    /// The optimizer step in progress (for fault points and events).
    public var currentStep = 0
    /// The micro-batch shard of the Forward and Backward requests sent now (`Envelope.shard`,
    /// protocol 4; set by `RemoteExpertBackend.shard`). `.whole` is not sent (absent = the whole batch).
    public var shard: Shard = .whole
    /// Workers declared dead, with why; cleared when the worker registers again.
    public private(set) var lost: [String: WorkerLoss] = [:]
    /// Workers that registered (new, new incarnation, or back after being declared dead)
    /// and are not yet used: the backend takes them at the next step boundary. One revived by a
    /// beat and told `DECLARED_DEAD` joins when its Register (what it holds) arrives, or a liveness
    /// window after the notice (an older worker does not answer it: it joins holding nothing).
    public var joined: [String] {
        let now = monotonicSeconds()
        return joinedIDs.filter { w in askedToRegister[w].map { now - $0 > livenessWindow } ?? true }
    }
    private var joinedIDs: [String] = []
    /// Refusals sent so far (duplicate ids), newest last.
    public private(set) var refusals: [String] = []
    /// The longest silence of each worker its liveness check saw while the coordinator waited
    /// on it (seconds since its last sign of life): how close it came to `livenessWindow`.
    public private(set) var longestSilence: [String: Double] = [:]

    private var nextRequestID: UInt64 = 1
    private var routes: [String: String] = [:]          // worker id → routing id
    private var workerByRoute: [String: String] = [:]   // routing id → worker id
    private var lastHeard: [String: Double] = [:]
    /// What the beats heard during an exchange said about its pending requests (`ResendClock`),
    /// and workers of the exchange that registered again on a new connection (same process).
    private var heardProgress: [UInt64: (worker: String, at: Double, progress: RequestProgress)] = [:]
    private var reconnected: Set<String> = []
    /// A second incarnation of a registered id, judged once the first has had a liveness window to speak.
    private var contested: [String: (registration: Registration, since: Double)] = [:]
    /// Workers revived by a beat and told `DECLARED_DEAD` (when), whose Register (what they hold) is awaited.
    private var askedToRegister: [String: Double] = [:]

    /// Binds a ROUTER at `endpoint` (`tcp://127.0.0.1:*` picks a free port).
    /// With `security`, every link is CURVE-encrypted and only workers whose public key is
    /// allowed can connect (a ZAP handler; each refusal goes to `securityLog`, default stderr,
    /// and to `zap.refusals`).
    public init(bind endpoint: String, maxFrameBytes: Int = WireCodec.defaultMaxFrameBytes,
                heartbeatInterval: Double = 0.25, heartbeatLiveness: Int = 3,
                security: CoordinatorSecurity? = nil,
                securityLog: (@Sendable (String) -> Void)? = nil) throws {
        do {
            context = try ZMQContext()
            socket = try Socket(context: context, type: .router)
            if let security {
                // The handler must answer before the first client connects: without one libzmq admits any key.
                zap = try ZAPHandler(context: context, allowedKeys: security.allowedKeys, watching: socket,
                                     log: securityLog ?? { writeStandardError("thor coordinator: \($0)") })
                try socket.makeCurveServer(secretKey: security.keyPair.secretKey)
            } else {
                zap = nil
            }
            try socket.setRouterMandatory(true)
            try socket.setHighWaterMarks(send: 0, receive: 0)
            // No ZMTP PING on this socket: libzmq counts only a whole frame as the answer to a PING, so a
            // timeout shorter than a large message's crossing closed the connection under it and lost it
            // (docs/reliability.md, "The transport's PING timeout"). Liveness is judged by the beats. (libzmq
            // still answers the PINGs of the workers' beat connections.)
            try socket.bind(endpoint)
            self.endpoint = try socket.lastEndpoint()
        } catch let e as ZMQError {
            throw ClusterError.transport(e.description)
        }
        self.maxFrameBytes = maxFrameBytes
        self.heartbeatInterval = heartbeatInterval
        self.heartbeatLiveness = heartbeatLiveness
        var rng = SystemRandomNumberGenerator()
        session = rng.next() | 1
    }

    deinit {
        socket.close()
        zap?.stop()
    }

    /// Seconds of silence after which a worker is dead.
    public var livenessWindow: Double { heartbeatInterval * Double(max(1, heartbeatLiveness)) }

    /// Whether `worker` is registered, not declared dead, and heard from within the liveness window.
    public func isAlive(_ worker: String) -> Bool {
        guard registrations[worker] != nil, lost[worker] == nil, let t = lastHeard[worker] else { return false }
        return monotonicSeconds() - t <= livenessWindow
    }

    /// Whether the link to `worker` is cut (a partition in force).
    public func isCut(_ worker: String) -> Bool {
        guard let until = cutLinks[worker] else { return false }
        if monotonicSeconds() < until { return true }
        cutLinks[worker] = nil
        return false
    }

    /// Registered workers not declared dead, in registration order.
    public var liveWorkerIDs: [String] { workerIDs.filter { lost[$0] == nil } }

    /// Declares `worker` dead (idempotent): nothing more is sent to it until it registers again.
    public func declareLost(_ worker: String, reason: String) {
        guard registrations[worker] != nil, lost[worker] == nil else { return }
        let now = monotonicSeconds()
        let loss = WorkerLoss(worker: worker, reason: reason, silentSeconds: now - (lastHeard[worker] ?? now), declaredAt: now)
        lost[worker] = loss
        askedToRegister[worker] = nil
        joinedIDs.removeAll { $0 == worker }
        onLoss?(loss)
    }

    /// The backend took `worker` into service (or gave up on it): it is no longer waiting to join.
    public func acceptJoin(_ worker: String) { joinedIDs.removeAll { $0 == worker } }

    /// Waits until `count` workers are registered and answer a heartbeat; throws naming how
    /// many did within `timeout` seconds. A worker that registered but died (its process
    /// exited, or it stopped beating) is not counted; `check` runs between polls.
    public func waitForWorkers(count: Int, timeout: Double, check: () throws -> Void = {}) throws {
        let deadline = monotonicSeconds() + timeout
        while true {
            try check()
            try poll(timeout: 0.05)
            let live = liveWorkerIDs.filter { isAlive($0) }
            if live.count >= count {
                // Registration counts only workers that answer.
                let probe = Array(live.prefix(count))
                let outcomes = try exchangeTolerant(probe.map { (worker: $0, message: WireMessage.heartbeat(sequence: 0, sentUnixNanos: unixNanoseconds())) },
                                                    operation: "Heartbeat", timeout: max(1, livenessWindow * 2))
                if outcomes.allSatisfy({ $0.message != nil }) {
                    joinedIDs.removeAll { probe.contains($0) }
                    return
                }
                continue
            }
            let left = deadline - monotonicSeconds()
            guard left > 0 else {
                let named = live.isEmpty ? "" : ": \(live.joined(separator: ", "))"
                throw ClusterError.timeout(operation: "registration (\(live.count) of \(count) registered and answering\(named))",
                                           workers: ["<unregistered>"], seconds: timeout)
            }
        }
    }

    /// Receives and handles everything that arrives within `timeout` seconds
    /// (registrations, beats), then checks children and contested ids.
    public func poll(timeout: Double) throws {
        let end = monotonicSeconds() + timeout
        repeat {
            var wait = max(0, min(end - monotonicSeconds(), heartbeatInterval / 2))
            while try receiveOne(timeout: wait, pending: [:]).any { wait = 0 }
            checkChildren()
            settleContested()
        } while monotonicSeconds() < end
    }

    /// Sends every request to the workers not declared dead and gathers their replies
    /// until each has answered or been declared dead (missed beats, exited process,
    /// unreachable, or no reply within `timeout` seconds, default: the learned deadline
    /// for `operation`). Never throws for a dead worker: its outcome is `.lost`.
    public func exchangeTolerant(_ requests: [(worker: String, message: WireMessage)], operation: String,
                                 phase: FaultPhase = .other, layer: Int? = nil,
                                 timeout: Double? = nil, dtype: WireDType = .f32) throws -> [ExchangeOutcome] {
        if requests.isEmpty { return [] }
        var outcomes = [ExchangeOutcome?](repeating: nil, count: requests.count)
        var pending: [UInt64: Int] = [:]
        var sentAt: [UInt64: Double] = [:]
        var attempts: [UInt64: Int] = [:]
        var clocks: [UInt64: ResendClock] = [:], requestBytes: [UInt64: Int] = [:], resendCount = 0
        // Bytes sent to each worker in this exchange so far: a request crosses its connection after
        // those before it (a Step behind a 50 MB ApplyGradients), so its clock allows for them all.
        var bytesTo: [String: Int] = [:]
        heardProgress.removeAll(); reconnected.removeAll()
        // The process (incarnation) each request was sent to: only it owes the reply. A worker
        // that registered again as a new process during the exchange holds none of that state.
        var owedBy: [UInt64: UInt64] = [:]
        func replaced(_ id: UInt64, _ i: Int) -> Bool { registrations[requests[i].worker]?.incarnation != owedBy[id] }
        var held: [(at: Double, id: UInt64)] = []  // delayed by the injector
        var replyFaults: [UInt64: FaultAction] = [:]  // the injector's faults on replies, by request id
        var heldReplies: [(at: Double, reply: (UInt64, String, WireMessage, Double))] = []
        var t0 = monotonicSeconds()
        let traced = traces != nil && (phase == .forward || phase == .backward)
        var traceReplies: [ExchangeTrace.Reply] = []
        var firstSent: [UInt64: Double] = [:]
        let traceStart = t0
        let phases: (encode: Phase, send: Phase, wait: Phase, decode: Phase)? =
            phase == .forward ? (.encode, .send, .wait, .decode)
            : phase == .backward ? (.encodeBackward, .sendBackward, .waitBackward, .decodeBackward) : nil
        var sendSeconds = 0.0
        /// Encodes and sends request `i` as `id`; false when the worker is unreachable (then declared dead).
        func send(_ i: Int, id: UInt64, action: FaultAction) throws -> Bool {
            let r = requests[i]
            sentAt[id] = monotonicSeconds()
            clocks[id] = ResendClock(sentAt: sentAt[id]!, bytes: 0)
            if traced, firstSent[id] == nil { firstSent[id] = sentAt[id] }
            if action == .drop || isCut(r.worker) { return true }
            guard let route = routes[r.worker] else { return true }
            let frame = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: session, message: r.message,
                                                  shard: Self.shard(of: r.message, shard), sharedRegion: sharedLinks.token(route: route)),
                                         dtype: dtype, shared: sharedLinks.writer(route: route))
            if action == .corrupt, let p = frame.pointer { FaultInjector.corrupt(UnsafeMutableRawBufferPointer(start: p, count: frame.count)) }
            counters.bytesSent += frame.totalCount
            bytesTo[r.worker, default: 0] += frame.totalCount
            clocks[id] = ResendClock(sentAt: sentAt[id]!, bytes: bytesTo[r.worker]!)
            requestBytes[id] = frame.totalCount
            let sendStart = monotonicSeconds()
            defer { sendSeconds += monotonicSeconds() - sendStart }
            do {
                try socket.send([Frame(route)] + frame.zmqFrames())
            } catch let e as ZMQError where e.code == EHOSTUNREACH {
                pending[id] = nil
                lostUnreachable(r.worker)
                outcomes[i] = .lost(lost[r.worker]?.reason ?? "unreachable")
                return false
            } catch let e as ZMQError {
                throw ClusterError.transport("sending \(operation) to worker \(r.worker): \(e)")
            }
            return true
        }
        /// Sends request `id` again (same id: the worker answers a repeat from its reply cache).
        func resend(_ id: UInt64, why: String) throws {
            guard let i = pending[id], lost[requests[i].worker] == nil, !replaced(id, i) else { return }
            attempts[id, default: 0] += 1
            counters.resends += 1
            resendCount += 1
            onResend?(requests[i].worker, operation, why)
            _ = try send(i, id: id, action: .none)
        }
        for (i, r) in requests.enumerated() {
            guard registrations[r.worker] != nil, routes[r.worker] != nil else {
                outcomes[i] = .lost("not registered"); continue
            }
            if let l = lost[r.worker] { outcomes[i] = .lost(l.reason); continue }
            let id = nextRequestID
            nextRequestID += 1
            let action = faultHook?(FaultPoint(step: currentStep, phase: phase, layer: layer, worker: r.worker, operation: operation)) ?? .none
            pending[id] = i
            owedBy[id] = registrations[r.worker]?.incarnation
            if action != .none, action.sendsRequest { replyFaults[id] = action }
            if case .delay(let seconds) = action {
                held.append((at: monotonicSeconds() + seconds, id: id))
                sentAt[id] = .infinity
                continue
            }
            _ = try send(i, id: id, action: action.sendsRequest ? .none : action)
        }
        counters.requests += requests.count
        counters.encodeSeconds += monotonicSeconds() - t0
        let traceSent = monotonicSeconds()
        if let phases, let timer = phaseTimer {
            timer.add(phases.encode, monotonicSeconds() - t0 - sendSeconds)
            timer.add(phases.send, sendSeconds)
        }
        t0 = monotonicSeconds()
        let limit = timeout ?? deadlines.deadline(for: operation)
        let deadline = t0 + limit
        var decodeSeconds = 0.0
        let waitStart = t0
        defer {
            heardProgress.removeAll(); reconnected.removeAll()
            let wait = monotonicSeconds() - waitStart - decodeSeconds
            counters.waitSeconds += wait
            counters.decodeSeconds += decodeSeconds
            if traced {
                traces?.append(ExchangeTrace(operation: operation, phase: phase, started: traceStart, sent: traceSent,
                                             finished: monotonicSeconds(), replies: traceReplies, resends: resendCount))
            }
            if let phases, let timer = phaseTimer {
                timer.add(phases.wait, wait)
                timer.add(phases.decode, decodeSeconds)
            }
        }
        var nextBeat = t0 + heartbeatInterval
        while !pending.isEmpty {
            let now = monotonicSeconds()
            if now >= deadline {
                for (_, i) in pending {
                    let reason = "\(Self.deadlineReason) (\(decimal(limit, 2)) s for \(operation))"
                    declareLost(requests[i].worker, reason: reason)
                    outcomes[i] = .lost(reason)
                }
                pending.removeAll()
                break
            }
            // Requests the injector held back go out when their time comes.
            for h in held where h.at <= now && pending[h.id] != nil && !replaced(h.id, pending[h.id]!) { _ = try send(pending[h.id]!, id: h.id, action: .none) }
            held.removeAll { $0.at <= now }
            // Drain everything queued before judging liveness: after a long busy stretch of the
            // coordinator, a worker's recent beats may sit behind other frames.
            var wait = min(deadline - now, heartbeatInterval / 2, (held.map(\.at).min() ?? .infinity) - now,
                           (heldReplies.map(\.at).min() ?? .infinity) - now)
            // Replies the injector held back are read when their time comes (if still wanted).
            var due = heldReplies.filter { $0.at <= now }.map(\.reply)
            heldReplies.removeAll { $0.at <= now }
            func next() throws -> Received {
                if !due.isEmpty { return Received(any: true, reply: due.removeFirst(), arrivedAt: monotonicSeconds()) }
                return try receiveOne(timeout: max(0, wait), pending: pending,
                                      damaging: Set(replyFaults.filter { $0.value == .corruptReply }.keys))
            }
            while case let received = try next(), received.any {
                wait = 0
                if let worker = received.undecodableFrom {
                    // A frame of this worker arrived damaged (perhaps a reply): ask again for what it
                    // owes; a request it already applied is answered from its reply cache.
                    for (id, i) in pending where requests[i].worker == worker {
                        if replyFaults[id] == .corruptReply { replyFaults[id] = nil }
                        if attempts[id, default: 0] < maxResends { try resend(id, why: "a frame from it could not be decoded") }
                    }
                    continue
                }
                if let worker = received.refusedBy {
                    // The worker could not read a frame (it names no request): resend what it was sent.
                    onRefusedFrame?(worker, operation)
                    for (id, i) in pending where requests[i].worker == worker && attempts[id, default: 0] < maxResends {
                        try resend(id, why: "it refused a frame it could not decode")
                    }
                    continue
                }
                guard let (id, worker, message, seconds) = received.reply, pending[id] != nil else { continue }
                switch replyFaults.removeValue(forKey: id) {
                case .dropReply?: continue  // lost: the retry timer asks again
                case .delayReply(let s)?:
                    heldReplies.append((at: monotonicSeconds() + s, reply: (id, worker, message, seconds)))
                    continue
                default: break
                }
                decodeSeconds += seconds
                let i = pending[id]!
                guard worker == requests[i].worker else {
                    throw ClusterError.unexpectedReply(worker: worker, operation: operation,
                                                       detail: "reply to request \(id), which was sent to \(requests[i].worker)")
                }
                if case .error(.malformed, _) = message, attempts[id, default: 0] < maxResends {
                    // Refused as undecodable (damaged on the way; nothing was applied): send it again.
                    onRefusedFrame?(worker, operation)
                    try resend(id, why: "it refused request \(id) as malformed")
                    continue
                }
                pending[id] = nil
                outcomes[i] = .reply(message)
                if attempts[id] == nil, let t = sentAt[id] {  // one send, one reply: a measured transfer
                    deadlines.recordTransfer(bytes: (requestBytes[id] ?? 0) + received.bytes,
                                             seconds: received.arrivedAt - t - (received.timings.map { $0.decode + $0.queue + $0.compute + $0.encode } ?? 0))
                }
                if traced {
                    traceReplies.append(ExchangeTrace.Reply(worker: worker, sentAt: firstSent[id] ?? traceStart,
                                                            arrivedAt: received.arrivedAt, decodeSeconds: seconds,
                                                            timings: received.timings))
                }
            }
            // Lazy Pirate, told by the beats (`ResendClock`): a request to a live worker is sent again
            // (a repeat is answered from the reply cache) when its connection was re-established, or
            // when nothing was heard of it for longer than its kind usually takes plus its bytes' time on
            // the link; never while the worker's beats say it is serving it.
            for (id, h) in heardProgress { if let i = pending[id], requests[i].worker == h.worker { clocks[id]?.observe(h.progress, at: h.at) } }
            heardProgress.removeAll()
            let retryBase = max(deadlines.retryAfter(for: operation), 2 * heartbeatInterval)
            let tr = monotonicSeconds()
            for (id, i) in pending where attempts[id, default: 0] < maxResends && lost[requests[i].worker] == nil && !replaced(id, i) {
                if reconnected.contains(requests[i].worker) {
                    try resend(id, why: "its connection was re-established")
                } else if clocks[id]?.due(now: tr, base: retryBase, estimator: deadlines) == true {
                    try resend(id, why: "no reply after \(decimal(tr - sentAt[id]!, 2)) s")
                }
            }
            reconnected.removeAll()
            // Liveness both ways: beat to the workers we wait on; a silent or exited one is dead.
            checkChildren()
            if !contested.isEmpty { settleContested() }
            let t = monotonicSeconds()
            let waitingOn = Set(pending.values.map { requests[$0].worker })
            if t >= nextBeat {
                nextBeat = t + heartbeatInterval
                for w in waitingOn { sendBeat(to: w) }
            }
            for w in waitingOn where lost[w] == nil {
                if let h = lastHeard[w] { longestSilence[w] = max(longestSilence[w] ?? 0, t - h) }
                if let h = lastHeard[w], t - h > livenessWindow {
                    declareLost(w, reason: "missed \(heartbeatLiveness) heartbeats (silent for \(decimal(t - h, 2)) s)")
                }
            }
            for (id, i) in pending where lost[requests[i].worker] != nil || replaced(id, i) {
                // Lost, or declared lost and already back as a new process (its registration cleared
                // the mark): either way the process that owed this reply is gone.
                outcomes[i] = .lost(lost[requests[i].worker]?.reason ?? "restarted as a new process while \(operation) was pending")
                pending[id] = nil
            }
        }
        if outcomes.allSatisfy({ $0?.message != nil }) { deadlines.record(operation, seconds: monotonicSeconds() - t0) }
        return outcomes.map { $0! }
    }

    private func sendBeat(to worker: String) {
        guard let route = routes[worker], !isCut(worker) else { return }
        let f = WireCodec.encode(Envelope(requestID: 0, sender: "coordinator", session: session,
                                          message: .heartbeat(sequence: 0, sentUnixNanos: unixNanoseconds())))
        do {
            try socket.send([Frame(route)] + f.zmqFrames(), dontWait: true)
        } catch let e as ZMQError where e.code == EHOSTUNREACH {
            lostUnreachable(worker)
        } catch {}
    }

    /// Tells a worker revived by a beat that it was declared dead (`DECLARED_DEAD`, request id 0, on its
    /// data connection): it answers with Register, naming what it holds and its committed step, so that
    /// `--on-expert-loss wait` can take its experts back. Its connection held (no ZMTP PING cuts it), so
    /// without this it would never register again. An older worker ignores it and stays a spare.
    private func askRegister(_ worker: String) {
        guard let route = routes[worker] else { return }
        let m = "worker \(worker) was declared dead (\(lost[worker]?.reason ?? "silent")) and is heard again: register again with what you hold"
        let f = WireCodec.encode(Envelope(requestID: 0, sender: "coordinator", session: session,
                                          message: .error(code: .declaredDead, message: m)))
        if (try? socket.send([Frame(route)] + f.zmqFrames(), dontWait: true)) != nil { askedToRegister[worker] = monotonicSeconds() }
    }

    /// A worker whose connection is gone: when it is a child that exited, its exit status
    /// (seen within a few milliseconds) is the better reason.
    private func lostUnreachable(_ worker: String) {
        if childWatch != nil {
            for _ in 0..<10 {
                checkChildren()
                if lost[worker] != nil { return }
                usleep(5_000)
            }
        }
        let silent = monotonicSeconds() - (lastHeard[worker] ?? monotonicSeconds())
        declareLost(worker, reason: silent > heartbeatInterval * 1.5
                    ? "missed heartbeats (silent for \(decimal(silent, 2)) s; its connection was dropped)"
                    : "unreachable (connection gone)")
    }

    private func checkChildren() {
        guard let watch = childWatch else { return }
        // An exited process sends nothing more: its shared-memory link goes (a silent one may come back and keeps it).
        for (w, reason) in watch() { declareLost(w, reason: reason); sharedLinks.drop(route: routes[w]) }
    }

    /// Decides contested ids: the old incarnation still beating → the newcomer is refused
    /// by name; the old one silent for a liveness window → the newcomer replaces it.
    private func settleContested() {
        let now = monotonicSeconds()
        for (id, c) in contested {
            guard let old = registrations[id] else { contested[id] = nil; continue }
            let oldAlive = lost[id] == nil && (lastHeard[id].map { now - $0 <= livenessWindow } ?? false)
            if !oldAlive {
                contested[id] = nil
                declareLost(id, reason: "replaced by a new incarnation (pid \(c.registration.pid))")
                admit(c.registration)
            } else if now - c.since > livenessWindow {
                contested[id] = nil
                let m = "worker id \(id) is already used by a live worker (pid \(old.pid) on \(old.hostname)); "
                    + "this one (pid \(c.registration.pid) on \(c.registration.hostname)) was refused: give each worker its own --id"
                refusals.append(m)
                onRefusal?(m)
                let f = WireCodec.encode(Envelope(requestID: 0, sender: "coordinator", session: session,
                                                  message: .error(code: .duplicateWorkerID, message: m)))
                try? socket.send([Frame(c.registration.routingID)] + f.zmqFrames(), dontWait: true)
            }
        }
    }

    private func admit(_ r: Registration) {
        let id = r.workerID
        let isNew = registrations[id] == nil
        if let old = routes[id] { workerByRoute[old] = nil; if old != r.routingID { sharedLinks.drop(route: old) } }
        sharedLinks.accept(r)
        routes[id] = r.routingID
        workerByRoute[r.routingID] = id
        let changed = registrations[id]?.incarnation != r.incarnation
        registrations[id] = r
        lastHeard[id] = monotonicSeconds()
        if isNew { workerIDs.append(id) }
        let wasLost = lost[id] != nil
        lost[id] = nil
        if isNew || changed || wasLost {
            if !joinedIDs.contains(id) { joinedIDs.append(id) }
            onRegistration?(r)
        }
    }

    /// Receives one frame: registrations and beats are recorded; replies to `pending`
    /// ids are returned with their decode time; anything else is dropped. A frame from a
    /// worker in service that cannot be decoded is reported (`undecodableFrom`). Replies to
    /// the ids in `damaging` are damaged on arrival, before decoding (the fault injector's
    /// corrupt reply: `FaultInjector.corrupt` on the header frame, as on a request).
    private func receiveOne(timeout: Double, pending: [UInt64: Int], damaging: Set<UInt64> = []) throws -> Received {
        let frames: [Frame]
        do {
            guard let f = try socket.receive(timeout: timeout) else { return .nothing }
            frames = f
        } catch let e as ZMQError {
            throw ClusterError.transport("receive: \(e)")
        }
        let arrivalTime = monotonicSeconds()
        guard frames.count >= 2 else { return .handled }  // not a thor worker
        // A worker's beat connection (`BeatChannel`) speaks for the worker of the data routing id it names.
        var route = frames[0].string
        let onBeatChannel = BeatChannel.dataRoute(of: route)
        if let dataRoute = onBeatChannel { route = dataRoute }
        let frameBytes = frames.dropFirst().reduce(0) { $0 + $1.count }
        counters.bytesReceived += frameBytes
        let t0 = monotonicSeconds()
        var decoded = try? WireCodec.decode(frames: frames.dropFirst(), maxFrameBytes: maxFrameBytes, shared: sharedLinks.reader(route: route))
        if let e = decoded, damaging.contains(e.requestID) {
            let header = Frame(copying: frames[1].bytes)
            FaultInjector.corrupt(UnsafeMutableRawBufferPointer(mutating: header.bytes))
            decoded = try? WireCodec.decode(frames: [header] + frames.dropFirst(2), maxFrameBytes: maxFrameBytes)
        }
        guard let envelope = decoded else {
            if let worker = workerByRoute[route], !isCut(worker), lost[worker] == nil { return Received(any: true, reply: nil, undecodableFrom: worker) }
            return .handled
        }
        let seconds = monotonicSeconds() - t0
        if onBeatChannel != nil {
            // Only beats travel there: anything else on it is not a worker's word.
            guard envelope.requestID == 0, case .heartbeat = envelope.message else { return .handled }
        }
        if case .register(let r) = envelope.message {
            guard r.routingID == route, !r.workerID.isEmpty, !isCut(r.workerID) else { return .handled }
            if let old = registrations[r.workerID], old.incarnation != r.incarnation, lost[r.workerID] == nil {
                // Judged in `settleContested` once queued frames are drained.
                if contested[r.workerID] == nil { contested[r.workerID] = (r, monotonicSeconds()) }
            } else if registrations[r.workerID]?.incarnation == r.incarnation, lost[r.workerID] == nil,
                      askedToRegister.removeValue(forKey: r.workerID) != nil {
                // The answer to DECLARED_DEAD: what the revived worker holds (its connection held, nothing was lost on it).
                registrations[r.workerID] = r
                lastHeard[r.workerID] = monotonicSeconds()
                onRegistration?(r)
            } else if registrations[r.workerID]?.incarnation == r.incarnation, lost[r.workerID] == nil {
                registrations[r.workerID] = r  // a reconnect of a worker in service
                lastHeard[r.workerID] = monotonicSeconds()
                reconnected.insert(r.workerID)  // what its old connection held may be lost
            } else {
                admit(r)
            }
            return .handled
        }
        guard let worker = workerByRoute[route], !isCut(worker) else { return .handled }
        lastHeard[worker] = monotonicSeconds()
        if envelope.requestID == 0 {
            for p in envelope.progress where p.session == session && pending[p.requestID] != nil {
                heardProgress[p.requestID] = (worker, arrivalTime, p)
            }
        }
        if let l = lost[worker], onBeatChannel == nil, lastHeard[worker]! - l.declaredAt > livenessWindow, var r = registrations[worker] {
            // Declared dead, yet beating again (it was starved or hung, and its connection held): a candidate to
            // rejoin with state transfer. What it holds is unknown until it registers again. Only its data connection
            // revives it: a beat on the beat connection may come before the data connection is back (then a request fails).
            r.hosted = []
            r.committedStep = -1
            admit(r)
            askRegister(worker)
        }
        if envelope.requestID == 0, case .error(.malformed, _) = envelope.message, pending.values.isEmpty == false {
            return Received(any: true, reply: nil, refusedBy: worker)
        }
        guard envelope.requestID != 0, pending[envelope.requestID] != nil else { return .handled }  // a beat, stale or duplicate
        if phaseTimer?.isEnabled ?? true { recordTimings(envelope.timings, of: worker) }
        return Received(any: true, reply: (envelope.requestID, worker, envelope.message, seconds),
                        arrivedAt: arrivalTime, timings: envelope.timings, bytes: frameBytes)
    }

    private func recordTimings(_ timings: WorkerTimings?, of worker: String) {
        var totals = workerTotals[worker] ?? WorkerTotals()
        totals.replies += 1
        if let t = timings { totals.timings = totals.timings + t; totals.timedReplies += 1 }
        workerTotals[worker] = totals
    }
}
