import ThorTensor
import ThorExperts

/// The protocol version this build speaks (`Envelope.protocol_version`, Protos/thor.proto).
public let thorProtocolVersion: UInt32 = 5

/// Element type of tensors on the wire. Decoded tensors are always Float32.
public enum WireDType: Sendable, Equatable, CaseIterable {
    /// 4 bytes per element, exact.
    case f32
    /// 2 bytes per element: the upper half of the f32, rounded to nearest even (lossy).
    case bf16

    /// Bytes per element.
    public var size: Int { self == .f32 ? 4 : 2 }
}

/// Error codes carried by `Error` replies (Protos/thor.proto `ErrorCode`).
public enum WireErrorCode: UInt32, Sendable, Equatable, CaseIterable {
    case unspecified = 0
    case malformed = 1
    case versionMismatch = 2
    case tooLarge = 3
    case badTensor = 4
    case unknownExpert = 5
    case shapeMismatch = 6
    case noPendingForward = 7
    case missingState = 8
    case notAssigned = 9
    case unexpectedMessage = 10
    case `internal` = 11
    /// Coordinator → worker: another live worker is registered under this id; the worker exits.
    case duplicateWorkerID = 12
    /// A shard out of range, another shard count within one step, a shard on a message that takes
    /// none, or a GradNorm / Gradients / Step while a shard's backward is missing (protocol 4).
    case badShard = 13
    /// Data-parallel coordinators (docs/data-parallel.md, step 3): a request only the leader may send
    /// (Assign, Import, Step, ZeroGradients, GradNorm, Gradients, ApplyGradients, Shutdown) came over a
    /// follower coordinator's link. Nothing changed.
    case notLeader = 60
    /// Coordinator → worker (request id 0): the coordinator declared this worker dead and hears it
    /// again on its data connection (it was stopped or starved, and its connection held). The worker
    /// sends Register again, with what it holds, and keeps serving (docs/reliability.md, "Liveness").
    case declaredDead = 70
}

/// A worker announcing itself (sent on connect and after every reconnect).
public struct Registration: Sendable, Equatable {
    public var workerID: String
    public var threads: Int
    public var capacityBytes: UInt64
    public var pid: Int
    public var hostname: String
    /// Random per process start: a changed incarnation means the worker restarted and lost its state.
    public var incarnation: UInt64
    /// Experts it already hosts (a rejoining worker).
    public var hosted: [ExpertKey]
    /// The session of the coordinator it last served (0: none yet).
    public var session: UInt64
    /// The last optimizer step it applied (0: none).
    public var committedStep: Int
    /// Protocol 5: the shared-memory region it offers for the link (nil: none; `SharedRegion`).
    public var sharedRegion: SharedRegionOffer?

    public init(workerID: String, threads: Int, capacityBytes: UInt64 = 0, pid: Int, hostname: String,
                incarnation: UInt64, hosted: [ExpertKey] = [], session: UInt64 = 0, committedStep: Int = 0,
                sharedRegion: SharedRegionOffer? = nil) {
        self.workerID = workerID; self.threads = threads; self.capacityBytes = capacityBytes
        self.pid = pid; self.hostname = hostname; self.incarnation = incarnation; self.hosted = hosted
        self.session = session; self.committedStep = committedStep; self.sharedRegion = sharedRegion
    }

    /// The ZeroMQ routing id a worker uses: its id and incarnation, so a restarted
    /// worker (or a second process given the same id) never collides with a stale connection.
    public var routingID: String { Self.routingID(workerID: workerID, incarnation: incarnation) }

    public static func routingID(workerID: String, incarnation: UInt64) -> String {
        workerID + "#" + String(incarnation, radix: 16)
    }
}

/// Which experts a worker hosts, and what they look like.
public struct Assignment: Sendable, Equatable {
    public var spec: ExpertSpec
    public var keys: [ExpertKey]
    public var placementEpoch: UInt64
    /// Keep experts already hosted (and their state) instead of re-initializing them.
    public var keepExisting: Bool
    /// The OpenBLAS kernel set the experts must be computed with (`BLASCore`); a worker that
    /// did not load it refuses the assignment. Default: the set this process loaded (the
    /// coordinator's). Empty: no requirement.
    public var blasCore: String

    public init(spec: ExpertSpec, keys: [ExpertKey], placementEpoch: UInt64 = 0, keepExisting: Bool = false,
                blasCore: String = BLASCore.loaded) {
        self.spec = spec; self.keys = keys; self.placementEpoch = placementEpoch; self.keepExisting = keepExisting
        self.blasCore = blasCore
    }
}

/// Every message body of the protocol.
public enum WireMessage: @unchecked Sendable {
    case register(Registration)
    case assign(Assignment)
    /// Run `batches` through experts of MoE layer `layer`; reply `forwardReply`.
    case forward(layer: Int, training: Bool, batches: [ExpertBatch], replyDType: WireDType?)
    case forwardReply(layer: Int, outputs: [ExpertBatch])
    /// Backward of the last training forward of `layer`; reply `backwardReply`.
    case backward(layer: Int, gradients: [ExpertBatch], replyDType: WireDType?)
    case backwardReply(layer: Int, inputGradients: [ExpertBatch])
    case gradNormRequest
    case gradNormReport([ExpertKey: Double])
    case step(learningRate: Float, clipScale: Float, step: Int)
    case zeroGradients
    /// Export the listed experts (empty: all hosted); reply `expertStates`.
    case exportRequest(keys: [ExpertKey])
    case expertStates([ExpertKey: [String: Tensor]])
    case importRequest([ExpertKey: [String: Tensor]])
    /// The accumulated gradients of the listed experts (empty: all hosted), by parameter name; reply `expertStates`.
    case gradientsRequest(keys: [ExpertKey])
    /// Replace the listed experts' accumulated gradients (a replica taking its primary's); reply `ack`.
    case applyGradients([ExpertKey: [String: Tensor]])
    case heartbeat(sequence: UInt64, sentUnixNanos: UInt64)
    case shutdown(reason: String)
    case ack
    case error(code: WireErrorCode, message: String)

    /// Short name for logs and errors.
    public var name: String {
        switch self {
        case .register: return "Register"
        case .assign: return "Assign"
        case .forward: return "Forward"
        case .forwardReply: return "ForwardReply"
        case .backward: return "Backward"
        case .backwardReply: return "BackwardReply"
        case .gradNormRequest: return "GradNormRequest"
        case .gradNormReport: return "GradNormReport"
        case .step: return "Step"
        case .zeroGradients: return "ZeroGradients"
        case .exportRequest: return "ExportRequest"
        case .expertStates: return "ExpertStates"
        case .importRequest: return "ImportRequest"
        case .gradientsRequest: return "GradientsRequest"
        case .applyGradients: return "ApplyGradients"
        case .heartbeat: return "Heartbeat"
        case .shutdown: return "Shutdown"
        case .ack: return "Ack"
        case .error: return "Error"
        }
    }
}

/// A worker's own timings of one request, carried by its reply (`WorkerTimings` in
/// Protos/thor.proto). Seconds on the worker's monotonic clock; `computeCPU` is the process
/// CPU time while computing (all its threads, so it can exceed `compute`).
public struct WorkerTimings: Sendable, Equatable {
    /// Unpacking the request.
    public var decode: Double
    /// From the request's arrival on the worker's I/O thread to its compute thread picking it up.
    public var queue: Double
    /// Serving the request (expert forward/backward, norms, the optimizer step).
    public var compute: Double
    /// Process CPU seconds used while computing.
    public var computeCPU: Double
    /// Packing the reply (measured while packing it: patched into the packed frame).
    public var encode: Double

    public init(decode: Double = 0, queue: Double = 0, compute: Double = 0, computeCPU: Double = 0, encode: Double = 0) {
        self.decode = decode; self.queue = queue; self.compute = compute; self.computeCPU = computeCPU; self.encode = encode
    }

    /// Field-wise sum (totals over requests).
    public static func + (a: WorkerTimings, b: WorkerTimings) -> WorkerTimings {
        WorkerTimings(decode: a.decode + b.decode, queue: a.queue + b.queue, compute: a.compute + b.compute,
                      computeCPU: a.computeCPU + b.computeCPU, encode: a.encode + b.encode)
    }

    /// Field-wise difference (a window of running totals).
    public static func - (a: WorkerTimings, b: WorkerTimings) -> WorkerTimings {
        WorkerTimings(decode: a.decode - b.decode, queue: a.queue - b.queue, compute: a.compute - b.compute,
                      computeCPU: a.computeCPU - b.computeCPU, encode: a.encode - b.encode)
    }
}

/// One frame of the protocol: routing metadata and a body.
public struct Envelope: @unchecked Sendable {
    public var version: UInt32
    /// Replies carry the id of their request.
    public var requestID: UInt64
    /// Worker id or coordinator id.
    public var sender: String
    /// Coordinator incarnation.
    public var session: UInt64
    public var message: WireMessage
    /// A worker reply's timings of its request (nil: not sent, e.g. by an older worker).
    public var timings: WorkerTimings?
    /// Forward and Backward: the micro-batch shard the request belongs to (`Envelope.shard`,
    /// field 30, protocol 4); nil: the whole batch. Decoded as sent, unchecked (the worker checks it).
    public var shard: Shard?
    /// A worker's beat: the requests it is serving or has just answered (`RequestProgress`, field 50).
    public var progress: [RequestProgress]
    /// Coordinator requests (protocol 5, field 41): the token of the worker's shared region the
    /// coordinator mapped (0: none); the worker may then answer through its reply ring.
    public var sharedRegion: UInt64

    public init(requestID: UInt64, sender: String = "", session: UInt64 = 0, message: WireMessage,
                version: UInt32 = thorProtocolVersion, timings: WorkerTimings? = nil, shard: Shard? = nil,
                progress: [RequestProgress] = [], sharedRegion: UInt64 = 0) {
        self.version = version; self.requestID = requestID; self.sender = sender
        self.session = session; self.message = message; self.timings = timings; self.shard = shard
        self.progress = progress; self.sharedRegion = sharedRegion
    }
}

/// A request a worker holds, as its beats report it: received and not yet answered
/// (`replyBytes` 0), or answered with a reply of `replyBytes` bytes handed to the transport.
public struct RequestProgress: Sendable, Equatable, Hashable {
    /// The coordinator (session) that sent it, and its id there.
    public var session: UInt64
    public var requestID: UInt64
    public var replyBytes: UInt64
    public init(session: UInt64, requestID: UInt64, replyBytes: UInt64 = 0) {
        self.session = session; self.requestID = requestID; self.replyBytes = replyBytes
    }
    /// Whether the reply has left the worker (it is on its way, or was lost with a connection).
    public var answered: Bool { replyBytes > 0 }
}

/// Why a frame or tensor was rejected.
public enum WireError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    case versionMismatch(received: UInt32, expected: UInt32, requestID: UInt64)
    case tooLarge(bytes: Int, limit: Int)
    case badTensor(String)

    public var description: String {
        switch self {
        case .malformed(let s): return "malformed frame: \(s)"
        case .versionMismatch(let r, let e, _):
            return "protocol version mismatch: frame has version \(r), this peer speaks version \(e)"
        case .tooLarge(let b, let l): return "frame too large: \(b) bytes exceeds the limit of \(l) bytes"
        case .badTensor(let s): return "bad tensor: \(s)"
        }
    }

    /// The code an `Error` reply carries for this failure.
    public var code: WireErrorCode {
        switch self {
        case .malformed: return .malformed
        case .versionMismatch: return .versionMismatch
        case .tooLarge: return .tooLarge
        case .badTensor: return .badTensor
        }
    }

    /// The request id, when the frame was readable enough to have one.
    public var requestID: UInt64 {
        if case .versionMismatch(_, _, let id) = self { return id }
        return 0
    }
}
