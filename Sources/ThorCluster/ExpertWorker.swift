import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import CZMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How an expert worker connects and when it gives up.
public struct WorkerOptions: Sendable {
    /// The coordinator's ROUTER endpoint (`tcp://host:port` or `ipc://path`). With data-parallel
    /// coordinators (docs/data-parallel.md, step 3) this is the leader's.
    public var endpoint: String
    /// The follower coordinators' endpoints (data-parallel ranks 1, 2, … in order; empty: one
    /// coordinator). The worker keeps a link to each (`thor worker --coordinator`); over these links
    /// only Forward, Backward, Export and Heartbeat are served, anything else is refused (`NOT_LEADER`).
    public var followerEndpoints: [String] = []
    /// Name in logs and registrations; unique among the coordinator's live workers.
    public var workerID: String
    /// Experts of one request computed concurrently (results do not depend on it).
    public var threads: Int = 1
    /// Exit when this process is no longer our parent (the coordinator that spawned us died).
    public var parentPID: Int32? = nil
    /// Exit after being disconnected from the coordinator this long (seconds; 0 = never).
    /// Until then the worker keeps its experts and re-registers with whichever coordinator
    /// session answers at the endpoint.
    public var orphanTimeout: Double = 30
    /// Frames above this many bytes get a `tooLarge` Error reply (10× above it, libzmq drops the connection).
    public var maxFrameBytes: Int = WireCodec.defaultMaxFrameBytes
    /// Memory budget and per-tensor element limit, checked before a request allocates.
    public var limits = WorkerLimits()
    /// Bytes the reply cache may hold (`ReplyCache`; nil: an eighth of `limits.memoryBudgetBytes`).
    public var replyCacheBytes: Int? = nil
    /// How often the loop checks signals, the parent and the connection (seconds).
    public var pollInterval: Double = 0.05
    /// Seconds between the worker's liveness beats (sent also while it computes).
    public var heartbeatInterval: Double = 0.25
    /// Missed intervals after which the connection to the coordinator counts as dead
    /// (ZMTP heartbeats on the beat connection: a hung coordinator looks like a disconnect).
    public var heartbeatLiveness: Int = 3
    /// Log lines to stderr.
    public var verbose: Bool = false
    /// Keys for a CURVE-secured coordinator (nil: unsecured links).
    public var security: WorkerSecurity? = nil
    /// Offer a shared-memory region for tensors (protocol 5; `THOR_SHARED_MEMORY=0` or
    /// `thor worker --no-shared-memory` turn it off), and the bytes of each of its two rings.
    public var sharedMemory: Bool = SharedRegion.enabledByEnvironment
    public var sharedRingBytes: Int = SharedRegion.defaultRingBytes

    public init(endpoint: String, workerID: String) {
        self.endpoint = endpoint
        self.workerID = workerID
    }
}

/// Why `ExpertWorker.run()` returned.
public enum WorkerExit: Sendable, Equatable, CustomStringConvertible {
    case shutdown(reason: String)
    case signal(Int32)
    case parentGone
    case orphaned(seconds: Double)
    /// No connection was ever made within the orphan timeout.
    case neverConnected(endpoint: String, seconds: Double)
    /// The coordinator refused this worker (e.g. its id is used by another live worker).
    case refused(String)

    public var description: String {
        switch self {
        case .shutdown(let r): return "shut down by the coordinator (\(r.isEmpty ? "no reason given" : r))"
        case .signal(let s): return "stopped by signal \(s)"
        case .parentGone: return "parent process is gone"
        case .orphaned(let s): return "disconnected from the coordinator for \(s) s"
        case .neverConnected(let e, let s):
            return "never connected to a coordinator at \(e) within \(s) s (is it running, and is the address right?)"
        case .refused(let m): return "refused by the coordinator: \(m)"
        }
    }
}

/// What the I/O thread needs to know about the compute side (for Register), behind a lock.
final class WorkerStatus: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var _session: UInt64 = 0
    private var _committedStep = 0
    private var _hosted: [ExpertKey] = []
    private var _stop = false
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func with<T>(_ body: (WorkerStatus) -> T) -> T {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return body(self)
    }
    var session: UInt64 { get { with { $0._session } } set { with { $0._session = newValue } } }
    var committedStep: Int { get { with { $0._committedStep } } set { with { $0._committedStep = newValue } } }
    var hosted: [ExpertKey] { get { with { $0._hosted } } set { with { $0._hosted = newValue } } }
    var stop: Bool { get { with { $0._stop } } set { with { $0._stop = newValue } } }
}

/// An expert-worker process's engine: a DEALER connected to the coordinator's
/// ROUTER, serving requests against an `ExpertHost` (same compute code as the
/// in-process backend, hence the same bits).
///
/// Two threads: the I/O thread owns the DEALER, answers heartbeats, sends a
/// liveness beat every `heartbeatInterval` (so a busy worker stays alive and a
/// stopped one falls silent) and watches the connection; the compute thread
/// serves requests in arrival order (they reach it over an inproc PAIR).
/// Every request gets exactly one reply (`Error` for anything bad, which changes no state).
public final class ExpertWorker: @unchecked Sendable {
    public let options: WorkerOptions
    /// The hosted experts; nil until the first Assign. Touched only by the compute thread while running.
    public private(set) var host: ExpertHost?
    /// Random per process start.
    public let incarnation: UInt64
    private var placementEpoch: UInt64 = 0
    let status = WorkerStatus()
    /// The shared-memory region offered to the coordinator (created by `run`; nil: frames only).
    private(set) var sharedMemory: WorkerSharedMemory?

    public init(options: WorkerOptions) {
        self.options = options
        var rng = SystemRandomNumberGenerator()
        incarnation = rng.next() | 1
    }

    private func log(_ s: String) {
        if options.verbose { writeStandardError("thor worker \(options.workerID): \(s)") }
    }

    var registration: Registration {
        Registration(workerID: options.workerID, threads: options.threads,
                     capacityBytes: UInt64(max(0, options.limits.memoryBudgetBytes)), pid: Int(getpid()),
                     hostname: currentHostname(), incarnation: incarnation, hosted: status.hosted,
                     session: status.session, committedStep: status.committedStep, sharedRegion: sharedMemory?.region.offer)
    }

    /// Connects, registers and serves until Shutdown, a termination signal, the
    /// parent's death, a long disconnection or a refusal.
    /// With `signals`, SIGTERM/SIGINT end the loop cleanly (`.signal`).
    public func run(signals: TerminationSignals? = nil) throws -> WorkerExit {
        try Endpoint.validate(options.endpoint)
        for e in options.followerEndpoints { try Endpoint.validate(e) }
        // One region, one writer: with several coordinators (data-parallel) tensors travel as frames,
        // since any of them could map a region offered to all.
        if options.followerEndpoints.isEmpty { sharedMemory = WorkerSharedMemory.create(options, log: log) }
        defer { sharedMemory?.region.unlink() }
        let context = try ZMQContext()
        // Link 0 is the (leader) coordinator, links 1… the follower coordinators (`WorkerLinks.swift`).
        var links: [WorkerLink] = []
        defer { for l in links { l.close() } }
        for endpoint in [options.endpoint] + options.followerEndpoints {
            links.append(try WorkerLink(endpoint: endpoint, worker: self, context: context))
        }
        // The compute thread's end of the request pipe.
        let pipeEndpoint = "inproc://thor-worker-compute-\(incarnation)"
        let pipe = try Socket(context: context, type: .pair)
        defer { pipe.close() }
        try pipe.setHighWaterMarks(send: 0, receive: 0)
        try pipe.bind(pipeEndpoint)
        let compute = startThread { [self] in self.serveRequests(context: context, endpoint: pipeEndpoint) }
        defer {
            status.stop = true
            // Wakes the compute thread if it is still waiting; never blocks: when it has already seen
            // `stop` (its receive times out every 0.2 s) and closed its end, a blocking send on the
            // PAIR socket would wait forever for a peer and this process would never exit.
            try? pipe.send([Frame()], dontWait: true)
            pthread_join(compute, nil)
        }
        for l in links {
            try l.socket.connect(l.endpoint)
            log("connecting to \(l.endpoint)")
            try send(Envelope(requestID: 0, sender: options.workerID, message: .register(registration)), on: l.socket)
        }

        var beat: UInt64 = 0
        var progress = RequestProgressTracker()  // what the beats say this worker holds
        var nextBeat = monotonicSeconds() + options.heartbeatInterval
        while true {
            let wait = max(0, min(options.pollInterval, nextBeat - monotonicSeconds()))
            let ready = try Socket.poll(links.flatMap { [$0.socket, $0.monitor] } + [pipe], timeout: wait)
            for (i, link) in links.enumerated() where ready[2 * i + 1] {
                while let event = try link.monitor.receiveEvent(timeout: 0) {
                    if event.kind.contains(.handshakeSucceeded) {
                        link.connected = true
                        link.everConnected = true
                        link.handshakes += 1
                        log("connected to \(event.endpoint)")
                        // After a reconnect the coordinator may be new: announce ourselves again.
                        if link.handshakes > 1 {
                            try send(Envelope(requestID: 0, sender: options.workerID, message: .register(registration)), on: link.socket)
                        }
                    } else if let refusal = securityRefusal(event) {
                        return .refused(refusal)
                    } else if event.kind.contains(.disconnected) {
                        // A failed attempt that never connected does not restart the orphan clock.
                        if link.connected { link.disconnectedSince = monotonicSeconds() }
                        link.connected = false
                        log("disconnected from \(event.endpoint)")
                    }
                }
            }
            for (i, link) in links.enumerated() where ready[2 * i] {
                if i == 0 { sharedMemory?.region.unlink() }  // the coordinator has mapped it, or declined it
                while let frames = try link.socket.receive(timeout: 0) {
                    if let exit = try handleOnIOThread(frames, link: i, socket: link.socket, pipe: pipe, progress: &progress) {
                        for l in links { try? l.socket.setLinger(milliseconds: 1000) }  // let the Ack go out
                        return exit
                    }
                }
            }
            if ready[2 * links.count] {
                while var reply = try pipe.receive(timeout: 0) {
                    // The compute thread appends the link the request came over (4 bytes, last frame).
                    let tag = reply.popLast()
                    progress.answered(reply)
                    guard let tag, tag.count == 4 else { continue }
                    let i = Int(UInt32(littleEndian: tag.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
                    if reply.count >= 1, reply[0].count > 0, links.indices.contains(i) { try links[i].socket.send(reply) }
                }
            }
            if monotonicSeconds() >= nextBeat {
                nextBeat = monotonicSeconds() + options.heartbeatInterval
                beat += 1
                for link in links where link.connected {
                    let e = Envelope(requestID: 0, sender: options.workerID, session: status.session,
                                     message: .heartbeat(sequence: beat, sentUnixNanos: unixNanoseconds()),
                                     progress: progress.report())
                    try send(e, on: link.socket)
                    try? link.beats.send(WireCodec.encode(e).zmqFrames(), dontWait: true)
                    while (try? link.beats.receive(timeout: 0)) != nil {}  // nothing is sent to it; never let it pile up
                }
            }
            if let s = signals?.received { return .signal(s) }
            if let p = options.parentPID, getppid() != p { return .parentGone }
            // Any coordinator gone for the orphan timeout ends the worker: the run needs every one.
            for link in links { try link.pollBeatMonitor() }
            for link in links where options.orphanTimeout > 0
                && monotonicSeconds() - (link.unreachableSince ?? .infinity) > options.orphanTimeout {
                return link.everConnected ? .orphaned(seconds: options.orphanTimeout)
                                          : .neverConnected(endpoint: link.endpoint, seconds: options.orphanTimeout)
            }
        }
    }

    /// The beat connection (`BeatChannel`): a DEALER with the data connection's settings, connected to the
    /// coordinator's endpoint, on which the I/O thread sends only its liveness beats; and its monitor
    /// (attached before connecting, so no handshake goes unseen). Unlike the data connection it keeps
    /// libzmq's PING, timing out after the liveness window: it carries only beats, so no large message can
    /// be cut, and a coordinator hung or gone without closing the connection starts the orphan clock.
    func connectBeatChannel(context: ZMQContext, endpoint: String) throws -> (beats: Socket, monitor: Socket) {
        let beats = try Socket(context: context, type: .dealer)
        var monitor: Socket? = nil
        do {
            try beats.setRoutingID(BeatChannel.route(forDataRoute: Registration.routingID(workerID: options.workerID, incarnation: incarnation)))
            try beats.setHighWaterMarks(send: 64, receive: 64)  // a beat not sent while disconnected is worth nothing later
            try beats.setReconnectInterval(milliseconds: 100)
            try beats.setHeartbeat(interval: options.heartbeatInterval,
                                   timeout: options.heartbeatInterval * Double(max(1, options.heartbeatLiveness)))
            try beats.setMaxMessageSize(64 * 1024)
            if let s = options.security { try beats.makeCurveClient(keyPair: s.keyPair, serverPublicKey: s.serverPublicKey) }
            monitor = try beats.monitor(events: [.handshakeSucceeded, .disconnected])
            try beats.connect(endpoint)
        } catch {
            monitor?.close()
            beats.close()
            throw error
        }
        return (beats, monitor!)
    }

    /// Why the coordinator's security handshake turned this worker away, if `event` says so
    /// (its ZAP handler refused our key, or one side uses CURVE and the other does not).
    private func securityRefusal(_ event: SocketEvent) -> String? {
        if event.kind.contains(.handshakeFailedAuth) {
            return "the coordinator at \(event.endpoint) does not admit this worker's public key (ZAP status \(event.value)); add this worker's .pub file to its --allowed-keys"
        }
        guard event.kind.contains(.handshakeFailedProtocol) else { return nil }
        if event.value == UInt32(bitPattern: ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            return options.security == nil
                ? "the coordinator at \(event.endpoint) requires CURVE keys; give --key FILE and --server-public-key FILE"
                : "the coordinator at \(event.endpoint) does not use CURVE keys, but this worker was given --key"
        }
        return "security handshake with the coordinator at \(event.endpoint) failed (ZMTP protocol error 0x\(String(event.value, radix: 16)))"
    }

    /// Answers heartbeats, Shutdown and refusals at once (never queued behind compute);
    /// hands every other message to the compute thread. Returns an exit reason to stop.
    private func handleOnIOThread(_ frames: [Frame], link: Int, socket: Socket, pipe: Socket,
                                  progress: inout RequestProgressTracker) throws -> WorkerExit? {
        if frames.count == 1, frames[0].count <= 512,
           let e = try? frames[0].withUnsafeBytes({ try WireCodec.decode($0, maxFrameBytes: options.maxFrameBytes) }) {
            switch e.message {
            case .error(.declaredDead, _) where e.requestID == 0:
                // The coordinator declared us dead (we were stopped or starved) and hears us again: tell it
                // what we hold, so that it can take our experts back (docs/reliability.md, "Liveness").
                log("declared dead by the coordinator of link \(link); registering again")
                try send(Envelope(requestID: 0, sender: options.workerID, message: .register(registration)), on: socket)
                return nil
            case .heartbeat, .shutdown, .error:
                let (reply, exit) = handle(frames, arrivedAt: nil, cachingReplies: false, link: link)
                if let reply { try socket.send(reply.zmqFrames()) }
                return exit
            default: break
            }
        }
        // Not for us to answer here: queue it for the compute thread (zero-copy over inproc),
        // with its arrival time (8 bytes, last frame) for the reply's queue timing.
        var arrival = MonotonicClock.seconds().bitPattern.littleEndian
        progress.handedOn(frames)
        try pipe.send(frames + [withUnsafeBytes(of: &arrival) { Frame(copying: $0) }, WorkerLink.tag(link)])
        return nil
    }

    /// The compute thread: receives requests over the inproc pipe and sends the replies back.
    private func serveRequests(context: ZMQContext, endpoint: String) {
        guard let pipe = try? Socket(context: context, type: .pair) else { return }
        defer { pipe.close() }
        try? pipe.setHighWaterMarks(send: 0, receive: 0)
        guard (try? pipe.connect(endpoint)) != nil else { return }
        while !status.stop {
            guard var frames = try? pipe.receive(timeout: 0.2) else { continue }
            if status.stop { return }
            // The I/O thread appended the link (4 bytes, last frame) the request came over.
            let link = frames.popLast().map { WorkerLink.index(of: $0) } ?? 0
            // The I/O thread appended the arrival time (8 bytes) as the last frame of every message.
            var arrival: Double? = nil
            if let last = frames.popLast(), last.count == 8 {
                arrival = Double(bitPattern: UInt64(littleEndian: last.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
            }
            let (reply, _) = handle(frames, arrivedAt: arrival, cachingReplies: true, link: link)
            try? pipe.send((reply?.zmqFrames() ?? [Frame()]) + [WorkerLink.tag(link)])
        }
    }

    private func send(_ e: Envelope, on socket: Socket) throws {
        try socket.send(WireCodec.encode(e).zmqFrames())
    }

    /// Answers one received message (the frames after the ROUTER's routing id):
    /// the reply to send, and an exit reason when the worker should stop.
    /// A bad message gets an Error reply and changes no state.
    ///
    /// Replies to requests that computed (Forward, Backward, GradNorm, Gradients, Step, Zero,
    /// Export, Import, Apply) carry this worker's `WorkerTimings` of the request; `arrivedAt`
    /// (a `MonotonicClock` reading on the I/O thread) gives its queue time (0 without it).
    /// `link`: the coordinator the frames came from (0: the leader, the only one of a
    /// single-coordinator run; ≥ 1: a follower, refused leader-only requests).
    public func handle(_ frames: [Frame], arrivedAt: Double? = nil, link: Int = 0) -> (EncodedFrame?, WorkerExit?) {
        handle(frames, arrivedAt: arrivedAt, cachingReplies: false, link: link)
    }

    /// The last replies (`ReplyCache`), so a request sent again is never applied twice.
    /// Touched only by the compute thread.
    lazy var replyCache = ReplyCache(maxBytes: options.replyCacheBytes ?? ReplyCache.defaultMaxBytes(options.limits))
    /// The shard count of the last Forward or Backward (1 without a shard; for the Assign check of
    /// per-shard gradient buffers). Touched only by the compute thread.
    private var lastShardCount = 1

    func handle(_ frames: [Frame], arrivedAt: Double?, cachingReplies: Bool, link: Int = 0) -> (EncodedFrame?, WorkerExit?) {
        let start = MonotonicClock.seconds()
        var timings = WorkerTimings(queue: arrivedAt.map { max(0, start - $0) } ?? 0)
        var computeStart = start, cpuStart = 0.0
        var session: UInt64 = 0
        var shard: Shard? = nil
        var replyRing: SharedRingWriter? = nil
        func remember(_ id: UInt64, _ m: WireMessage, _ dtype: WireDType, _ frame: EncodedFrame) -> EncodedFrame {
            guard cachingReplies, id != 0 else { return frame }
            replyCache.store(.init(session: session, shard: shard, id: id, message: m, dtype: dtype, bytes: frame.totalCount))
            return frame
        }
        func reply(_ id: UInt64, _ m: WireMessage, dtype: WireDType = .f32) -> EncodedFrame {
            remember(id, m, dtype, WireCodec.encode(Envelope(requestID: id, sender: options.workerID, message: m), dtype: dtype, shared: replyRing))
        }
        /// A computed request's reply, with the timings up to now (encode measured while packing).
        func timed(_ id: UInt64, _ m: WireMessage, dtype: WireDType = .f32) -> EncodedFrame {
            timings.compute = MonotonicClock.seconds() - computeStart
            timings.computeCPU = processCPUSeconds() - cpuStart
            return remember(id, m, dtype, WireCodec.encode(Envelope(requestID: id, sender: options.workerID, message: m),
                                                           dtype: dtype, measuringEncodeOf: timings, shared: replyRing))
        }
        let envelope: Envelope
        do {
            envelope = try WireCodec.decode(frames: frames[...], maxFrameBytes: options.maxFrameBytes, shared: sharedMemory?.requests)
        } catch let e as WireError {
            log("rejected a frame: \(e)")
            return (reply(e.requestID, .error(code: e.code, message: e.description)), nil)
        } catch {
            return (reply(0, .error(code: .internal, message: "\(error)")), nil)
        }
        let id = envelope.requestID
        computeStart = MonotonicClock.seconds()
        timings.decode = computeStart - start
        cpuStart = processCPUSeconds()
        if envelope.session != 0, envelope.sender == "coordinator", link == 0 { status.session = envelope.session }
        session = envelope.session
        shard = envelope.shard
        replyRing = sharedMemory?.replyRing(for: envelope)
        if cachingReplies { replyCache.noteShards(shard) }
        if cachingReplies, id != 0, let r = replyCache.lookup(session: session, shard: shard, id: id) {
            log("request \(id) again: answered from the reply cache")
            return (WireCodec.encode(Envelope(requestID: id, sender: options.workerID, message: r.message), dtype: r.dtype,
                                     shared: replyRing), nil)
        }
        do {
            try checkShard(envelope)
            try Self.checkLeaderOnly(envelope.message, link: link)
            switch envelope.message {
            case .assign(let a):
                try options.limits.check(a, shards: lastShardCount)
                try assign(a)
                status.hosted = host?.keys ?? []
                return (reply(id, .ack), nil)
            case .forward(let layer, let training, let batches, let dtype):
                try checkSize(batches, "Forward", shard: shard, layer: layer, allocating: false)
                let outs = try assigned().forward(layer: layer, shard: shard ?? .whole, batches: batches, training: training)
                let result = zip(batches, outs).map { ExpertBatch(expert: $0.expert, tokens: $1) }
                return (timed(id, .forwardReply(layer: layer, outputs: result), dtype: dtype ?? .f32), nil)
            case .backward(let layer, let gradients, let dtype):
                try checkSize(gradients, "Backward", shard: shard, layer: layer, allocating: true)
                let outs = try assigned().backward(layer: layer, shard: shard ?? .whole, gradients: gradients)
                let result = zip(gradients, outs).map { ExpertBatch(expert: $0.expert, tokens: $1) }
                return (timed(id, .backwardReply(layer: layer, inputGradients: result), dtype: dtype ?? .f32), nil)
            case .gradNormRequest:
                let h = try assigned()
                try h.settleGradients()   // the shards' gradients summed in shard order first
                return (timed(id, .gradNormReport(h.squaredGradientNorms())), nil)
            case .step(let lr, let clip, let step):
                try assigned().settleGradients()
                try assigned().step(learningRate: lr, clipScale: clip, step: step)
                status.committedStep = step
                return (timed(id, .ack), nil)
            case .zeroGradients:
                try assigned().zeroGradients()
                return (timed(id, .ack), nil)
            case .exportRequest(let keys):
                let h = try assigned()
                var all = h.exportState()
                if !keys.isEmpty {
                    for k in keys where all[k] == nil { throw ExpertBackendError.unknownExpert(k) }
                    all = all.filter { keys.contains($0.key) }
                }
                return (timed(id, .expertStates(all)), nil)
            case .importRequest(let state):
                try options.limits.check(state)
                try assigned().importState(state)
                status.hosted = host?.keys ?? []
                return (timed(id, .ack), nil)
            case .gradientsRequest(let keys):
                let h = try assigned()
                try h.settleGradients()
                var out: [ExpertKey: [String: Tensor]] = [:]
                for k in keys.isEmpty ? h.keys : keys {
                    guard let e = h.experts[k] else { throw ExpertBackendError.unknownExpert(k) }
                    out[k] = Dictionary(uniqueKeysWithValues: e.parameters.map { ($0.name, Tensor(copying: $0.grad)) })
                }
                return (timed(id, .expertStates(out)), nil)
            case .applyGradients(let state):
                try applyGradients(state, to: try assigned())
                return (timed(id, .ack), nil)
            case .heartbeat(let seq, _):
                // request id 0: a liveness beat, not a request.
                if id == 0 { return (nil, nil) }
                return (reply(id, .heartbeat(sequence: seq, sentUnixNanos: unixNanoseconds())), nil)
            case .error(.duplicateWorkerID, let message):
                return (nil, .refused(message))
            case .shutdown(let reason):
                return (reply(id, .ack), .shutdown(reason: reason))
            case .register, .forwardReply, .backwardReply, .gradNormReport, .expertStates, .ack, .error:
                return (reply(id, .error(code: .unexpectedMessage,
                                         message: "a worker does not accept \(envelope.message.name) messages")), nil)
            }
        } catch let e as ExpertBackendError {
            return (reply(id, .error(code: e.wireCode, message: e.description)), nil)
        } catch let e as WorkerRequestError {
            return (reply(id, .error(code: e.code, message: e.message)), nil)
        } catch {
            return (reply(id, .error(code: .internal, message: "\(error)")), nil)
        }
    }

    /// Checks a Forward or Backward against the limits, counting the per-shard gradient buffers
    /// allocated and, for a Backward of a shard > 0 (`allocating`), those it would allocate.
    private func checkSize(_ batches: [ExpertBatch], _ what: String, shard: Shard?, layer: Int, allocating: Bool) throws {
        let h = try assigned()
        var new = 0
        if allocating, let s = shard, s.index > 0 {
            new = batches.filter { $0.tokens.rows > 0 && !h.hasShardGradient(shard: s.index, key: ExpertKey(layer: layer, expert: $0.expert)) }.count
        }
        try options.limits.check(batches, spec: h.spec, hostedExperts: h.experts.count, shardBuffers: h.shardGradientBuffers,
                                 newShardBuffers: new, shard: shard, what: what)
        if let s = shard {
            if (try? s.validate()) != nil { lastShardCount = s.count }
        } else {
            lastShardCount = 1   // the whole batch: the run is at C = 1 (again)
        }
    }

    /// Protocol 4: only Forward and Backward carry a shard, and it must be in range.
    private func checkShard(_ envelope: Envelope) throws {
        guard let s = envelope.shard else { return }
        switch envelope.message {
        case .forward, .backward: try s.validate()
        default:
            throw WorkerRequestError(code: .badShard,
                                     message: "\(envelope.message.name) carries \(s); only Forward and Backward belong to a shard")
        }
    }

    /// Checks every tensor first, then replaces the experts' accumulated gradients (their shard
    /// gradients summed first, so that nothing of the step is left to add afterwards).
    private func applyGradients(_ state: [ExpertKey: [String: Tensor]], to h: ExpertHost) throws {
        var staged: [(Tensor, Tensor)] = []
        for (k, tensors) in state {
            guard let e = h.experts[k] else { throw ExpertBackendError.unknownExpert(k) }
            for p in e.parameters {
                guard let t = tensors[p.name] else { throw ExpertBackendError.missingState("gradient \(p.name) for expert \(k)") }
                guard t.count == p.grad.count else {
                    throw ExpertBackendError.shapeMismatch("gradient \(p.name): \(t.shape), expected \(p.grad.shape)")
                }
                staged.append((t, p.grad))
            }
        }
        try h.settleGradients()
        for (src, dst) in staged { dst.copy(from: src) }
    }

    private func assigned() throws -> ExpertHost {
        guard let host else {
            throw WorkerRequestError(code: .notAssigned, message: "worker \(options.workerID) has no experts assigned yet")
        }
        return host
    }

    private func assign(_ a: Assignment) throws {
        try requireBLASCore(a.blasCore)
        let s = a.spec
        guard s.modelDim > 0, s.hiddenDim > 0 else {
            throw WorkerRequestError(code: .malformed, message: "Assign: expert spec needs positive widths, got d=\(s.modelDim) d_ff=\(s.hiddenDim)")
        }
        guard Set(a.keys).count == a.keys.count else {
            throw WorkerRequestError(code: .malformed, message: "Assign: an expert key is listed twice")
        }
        let fresh = ExpertHost(spec: s, keys: a.keys, threads: options.threads)
        if a.keepExisting, let old = host, old.spec == s {
            let kept = old.exportState().filter { a.keys.contains($0.key) }
            try fresh.importState(kept)
        }
        host = fresh
        placementEpoch = a.placementEpoch
        log("assigned \(a.keys.count) experts: \(a.keys.map(\.description).joined(separator: " "))")
    }
}

/// CPU seconds of this process so far (all threads: expert threads, OpenBLAS's).
func processCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// A request a worker refuses (not an expert-compute error).
struct WorkerRequestError: Error {
    let code: WireErrorCode
    let message: String
}
