import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How an expert worker connects and when it gives up.
public struct WorkerOptions: Sendable {
    /// The coordinator's ROUTER endpoint (`tcp://host:port` or `ipc://path`).
    public var endpoint: String
    /// Routing id and name in logs; unique among the coordinator's workers.
    public var workerID: String
    /// Experts of one request computed concurrently (results do not depend on it).
    public var threads: Int = 1
    /// Exit when this process is no longer our parent (the coordinator that spawned us died).
    public var parentPID: Int32? = nil
    /// Exit after being disconnected from the coordinator this long (seconds; 0 = never).
    public var orphanTimeout: Double = 30
    /// Frames above this many bytes get a `tooLarge` Error reply (10× above it, libzmq drops the connection).
    public var maxFrameBytes: Int = WireCodec.defaultMaxFrameBytes
    /// How often the loop checks signals, the parent and the connection (seconds).
    public var pollInterval: Double = 0.05
    /// Log lines to stderr.
    public var verbose: Bool = false

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

    public var description: String {
        switch self {
        case .shutdown(let r): return "shut down by the coordinator (\(r.isEmpty ? "no reason given" : r))"
        case .signal(let s): return "stopped by signal \(s)"
        case .parentGone: return "parent process is gone"
        case .orphaned(let s): return "disconnected from the coordinator for \(s) s"
        }
    }
}

/// An expert-worker process's engine: a DEALER connected to the coordinator's
/// ROUTER, serving requests against an `ExpertHost` (same compute code as the
/// in-process backend, hence the same bits).
///
/// Every request gets exactly one reply (`Error` for anything bad, which changes
/// no state). Use from one thread.
public final class ExpertWorker {
    public let options: WorkerOptions
    /// The hosted experts; nil until the first Assign.
    public private(set) var host: ExpertHost?
    /// Random per process start.
    public let incarnation: UInt64
    private var placementEpoch: UInt64 = 0

    public init(options: WorkerOptions) {
        self.options = options
        var rng = SystemRandomNumberGenerator()
        incarnation = rng.next()
    }

    private func log(_ s: String) {
        if options.verbose { writeStandardError("thor worker \(options.workerID): \(s)") }
    }

    var registration: Registration {
        Registration(workerID: options.workerID, threads: options.threads, pid: Int(getpid()),
                     hostname: currentHostname(), incarnation: incarnation, hosted: host?.keys ?? [])
    }

    /// Connects, registers and serves until Shutdown, a termination signal, the
    /// parent's death or a long disconnection.
    /// With `signals`, SIGTERM/SIGINT end the loop cleanly (`.signal`).
    public func run(signals: TerminationSignals? = nil) throws -> WorkerExit {
        let context = try ZMQContext()
        let socket = try Socket(context: context, type: .dealer)
        defer { socket.close() }
        try socket.setRoutingID(options.workerID)
        try socket.setHighWaterMarks(send: 0, receive: 0)
        try socket.setReconnectInterval(milliseconds: 100)
        let hardLimit = options.maxFrameBytes > Int.max / 10 ? -1 : Int64(options.maxFrameBytes) * 10
        try socket.setMaxMessageSize(hardLimit)
        let monitor = try socket.monitor(events: [.handshakeSucceeded, .disconnected])
        defer { monitor.close() }
        try socket.connect(options.endpoint)
        log("connecting to \(options.endpoint)")
        try send(Envelope(requestID: 0, sender: options.workerID, message: .register(registration)), on: socket)

        var connected = false, handshakes = 0
        var disconnectedSince = monotonicSeconds()
        while true {
            let ready = try Socket.poll([socket, monitor], timeout: options.pollInterval)
            if ready[1] {
                while let event = try monitor.receiveEvent(timeout: 0) {
                    if event.kind.contains(.handshakeSucceeded) {
                        connected = true
                        handshakes += 1
                        log("connected to \(event.endpoint)")
                        // After a reconnect the coordinator may be new: announce ourselves again.
                        if handshakes > 1 {
                            try send(Envelope(requestID: 0, sender: options.workerID, message: .register(registration)), on: socket)
                        }
                    } else if event.kind.contains(.disconnected) {
                        connected = false
                        disconnectedSince = monotonicSeconds()
                        log("disconnected from \(event.endpoint)")
                    }
                }
            }
            if ready[0] {
                while let frames = try socket.receive(timeout: 0) {
                    let (reply, exit) = handle(frames)
                    if let reply { try socket.send([Frame(adoptingMalloced: reply.take(), count: reply.count)]) }
                    if let exit {
                        try? socket.setLinger(milliseconds: 1000)  // let the Ack go out
                        return exit
                    }
                }
            }
            if let s = signals?.received { return .signal(s) }
            if let p = options.parentPID, getppid() != p { return .parentGone }
            if !connected, options.orphanTimeout > 0, monotonicSeconds() - disconnectedSince > options.orphanTimeout {
                return .orphaned(seconds: options.orphanTimeout)
            }
        }
    }

    private func send(_ e: Envelope, on socket: Socket) throws {
        let f = WireCodec.encode(e)
        try socket.send([Frame(adoptingMalloced: f.take(), count: f.count)])
    }

    /// Answers one received message (the frames after the ROUTER's routing id):
    /// the reply to send, and an exit reason when the worker should stop.
    /// A bad message gets an Error reply and changes no state.
    public func handle(_ frames: [Frame]) -> (EncodedFrame?, WorkerExit?) {
        func reply(_ id: UInt64, _ m: WireMessage, dtype: WireDType = .f32) -> EncodedFrame {
            WireCodec.encode(Envelope(requestID: id, sender: options.workerID, message: m), dtype: dtype)
        }
        guard frames.count == 1 else {
            return (reply(0, .error(code: .malformed, message: "malformed frame: expected 1 frame per message, got \(frames.count)")), nil)
        }
        let envelope: Envelope
        do {
            envelope = try frames[0].withUnsafeBytes { try WireCodec.decode($0, maxFrameBytes: options.maxFrameBytes) }
        } catch let e as WireError {
            log("rejected a frame: \(e)")
            return (reply(e.requestID, .error(code: e.code, message: e.description)), nil)
        } catch {
            return (reply(0, .error(code: .internal, message: "\(error)")), nil)
        }
        let id = envelope.requestID
        do {
            switch envelope.message {
            case .assign(let a):
                try assign(a)
                return (reply(id, .ack), nil)
            case .forward(let layer, let training, let batches, let dtype):
                let outs = try assigned().forward(layer: layer, batches: batches, training: training)
                let result = zip(batches, outs).map { ExpertBatch(expert: $0.expert, tokens: $1) }
                return (reply(id, .forwardReply(layer: layer, outputs: result), dtype: dtype ?? .f32), nil)
            case .backward(let layer, let gradients, let dtype):
                let outs = try assigned().backward(layer: layer, gradients: gradients)
                let result = zip(gradients, outs).map { ExpertBatch(expert: $0.expert, tokens: $1) }
                return (reply(id, .backwardReply(layer: layer, inputGradients: result), dtype: dtype ?? .f32), nil)
            case .gradNormRequest:
                return (reply(id, .gradNormReport(try assigned().squaredGradientNorms())), nil)
            case .step(let lr, let clip, let step):
                try assigned().step(learningRate: lr, clipScale: clip, step: step)
                return (reply(id, .ack), nil)
            case .zeroGradients:
                try assigned().zeroGradients()
                return (reply(id, .ack), nil)
            case .exportRequest(let keys):
                let h = try assigned()
                var all = h.exportState()
                if !keys.isEmpty {
                    for k in keys where all[k] == nil { throw ExpertBackendError.unknownExpert(k) }
                    all = all.filter { keys.contains($0.key) }
                }
                return (reply(id, .expertStates(all)), nil)
            case .importRequest(let state):
                try assigned().importState(state)
                return (reply(id, .ack), nil)
            case .heartbeat(let seq, _):
                return (reply(id, .heartbeat(sequence: seq, sentUnixNanos: unixNanoseconds())), nil)
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

/// A request a worker refuses (not an expert-compute error).
struct WorkerRequestError: Error {
    let code: WireErrorCode
    let message: String
}
