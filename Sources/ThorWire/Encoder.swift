import CThorProto
import ThorTensor
import ThorExperts
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if _endian(big)
#error("thor's wire format is little-endian; f32 tensors are sent as their in-memory bytes")
#endif

/// The bytes of one tensor frame and the object that keeps them alive: the
/// sent tensor itself (f32, sent in place), a `MallocedBytes` (bf16), or a
/// received ZeroMQ frame.
public struct WirePayload {
    public let bytes: UnsafeRawBufferPointer
    public let owner: AnyObject

    public init(bytes: UnsafeRawBufferPointer, owner: AnyObject) { self.bytes = bytes; self.owner = owner }
}

/// A `malloc`ed buffer freed with its last reference.
public final class MallocedBytes {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int
    public init(count: Int) { pointer = malloc(max(count, 1))!; self.count = count }
    deinit { free(pointer) }
}

/// An encoded message: the Envelope frame in a `malloc`ed buffer, followed by
/// its tensor frames (`payloads`, in frame-index order). Hand the Envelope frame
/// to a transport with `take()` (the receiver frees it with `free`), or let it go
/// and it is freed. f32 payloads are the message's tensors themselves: they must
/// not be modified until sent.
public final class EncodedFrame {
    public private(set) var pointer: UnsafeMutableRawPointer?
    /// Bytes of the Envelope frame.
    public let count: Int
    /// The tensor frames, frame index order.
    public let payloads: [WirePayload]

    init(pointer: UnsafeMutableRawPointer, count: Int, payloads: [WirePayload]) {
        self.pointer = pointer; self.count = count; self.payloads = payloads
    }

    /// Bytes of the Envelope frame and every tensor frame.
    public var totalCount: Int { payloads.reduce(count) { $0 + $1.bytes.count } }

    /// Gives up ownership of the buffer (to be released with `free`).
    public func take() -> UnsafeMutableRawPointer {
        guard let p = pointer else { preconditionFailure("EncodedFrame taken twice") }
        pointer = nil
        return p
    }

    /// Calls `body` with the Envelope frame's bytes (empty once taken), keeping the buffer alive meanwhile.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(bytes) }
    }

    /// The Envelope frame's bytes (while not taken). The optimizer may free the frame right after
    /// its last use: prefer `withUnsafeBytes`.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: pointer == nil ? 0 : count) }

    deinit { if let p = pointer { free(p) } }
}

/// C memory for one encode: every struct, array and string is freed together.
final class Arena {
    private var blocks: [UnsafeMutableRawPointer] = []
    /// Tensor frames referenced so far (`Thor__Tensor.frame` indexes this).
    var payloads: [WirePayload] = []
    /// Where f32 tensors go instead of frames when it has room (protocol 5; nil: frames only).
    var shared: SharedTensorWriter?
    deinit { for b in blocks { free(b) } }

    func raw(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = malloc(max(bytes, 1))!
        blocks.append(p)
        return p
    }

    func make<T>(_ type: T.Type, _ initialize: (UnsafeMutablePointer<T>) -> Void) -> UnsafeMutablePointer<T> {
        let p = raw(MemoryLayout<T>.stride).bindMemory(to: T.self, capacity: 1)
        initialize(p)
        return p
    }

    func array<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        raw(MemoryLayout<T>.stride * count).bindMemory(to: T.self, capacity: count)
    }

    func pointers<T>(_ items: [UnsafeMutablePointer<T>]) -> UnsafeMutablePointer<UnsafeMutablePointer<T>?> {
        let a = array(UnsafeMutablePointer<T>?.self, count: items.count)
        for (i, x) in items.enumerated() { a[i] = x }
        return a
    }

    func string(_ s: String) -> UnsafeMutablePointer<CChar> {
        let utf8 = Array(s.utf8)
        let p = raw(utf8.count + 1).bindMemory(to: CChar.self, capacity: utf8.count + 1)
        for (i, c) in utf8.enumerated() { p[i] = CChar(bitPattern: c) }
        p[utf8.count] = 0
        return p
    }
}

/// Encoding and decoding of `Envelope`s with protobuf-c.
public enum WireCodec {
    /// Packs `envelope`; tensors travel as `dtype` (bf16 is lossy) in their own frames
    /// (`EncodedFrame.payloads`). f32 tensors are not copied at all: each payload is the
    /// tensor's own storage. bf16 payloads are converted into new buffers.
    /// With `shared` (a ring of the link's shared region), f32 tensors are copied into the
    /// ring and referenced (`Tensor.ring/position/length`) while it has room; the rest go as frames.
    public static func encode(_ envelope: Envelope, dtype: WireDType = .f32, shared: SharedTensorWriter? = nil) -> EncodedFrame {
        let arena = Arena()
        arena.shared = shared
        // Tensors referenced by the C structs must outlive the pack: `envelope` holds them.
        return withExtendedLifetime(envelope) {
            let e = arena.make(Thor__Envelope.self) { thor__envelope__init($0) }
            e.pointee.protocol_version = envelope.version
            e.pointee.request_id = envelope.requestID
            e.pointee.sender = arena.string(envelope.sender)
            e.pointee.session = envelope.session
            e.pointee.shared_region = envelope.sharedRegion
            setBody(e, envelope.message, arena, dtype)
            if let shard = envelope.shard {
                e.pointee.shard = arena.make(Thor__Shard.self) { p in
                    thor__shard__init(p)
                    p.pointee.index = UInt32(clamping: shard.index)
                    p.pointee.count = UInt32(clamping: shard.count)
                }
            }
            if let t = envelope.timings {
                e.pointee.timings = arena.make(Thor__WorkerTimings.self) { p in
                    thor__worker_timings__init(p)
                    p.pointee.decode_seconds = t.decode; p.pointee.queue_seconds = t.queue
                    p.pointee.compute_seconds = t.compute; p.pointee.compute_cpu_seconds = t.computeCPU
                    p.pointee.encode_seconds = t.encode
                }
            }
            if !envelope.progress.isEmpty {
                let list = arena.array(UnsafeMutablePointer<Thor__RequestProgress>?.self, count: envelope.progress.count)
                for (i, r) in envelope.progress.enumerated() {
                    list[i] = arena.make(Thor__RequestProgress.self) { p in
                        thor__request_progress__init(p)
                        p.pointee.session = r.session; p.pointee.request_id = r.requestID; p.pointee.reply_bytes = r.replyBytes
                    }
                }
                e.pointee.n_progress = envelope.progress.count
                e.pointee.progress = list
            }
            let size = thor__envelope__get_packed_size(e)
            let out = malloc(max(size, 1))!
            // pack_to_buffer, not pack: protobuf-c's `pack` writes each nested message after a
            // 1-byte length guess and then memmoves it when the length needs more bytes, so
            // tensor bytes (Envelope → request → batch → Tensor) were moved up to 3 more times.
            // pack_to_buffer computes each length first and appends the bytes once.
            var buffer = ProtobufCBufferSimple()
            buffer.base.append = protobuf_c_buffer_simple_append
            buffer.alloced = max(size, 1)
            buffer.len = 0
            buffer.data = out.assumingMemoryBound(to: UInt8.self)
            buffer.must_free_data = 0
            buffer.allocator = nil
            let written = withUnsafeMutablePointer(to: &buffer) {
                $0.withMemoryRebound(to: ProtobufCBuffer.self, capacity: 1) { thor__envelope__pack_to_buffer(e, $0) }
            }
            precondition(written == size && buffer.len == size && buffer.data == out.assumingMemoryBound(to: UInt8.self),
                         "protobuf-c packed \(written) of \(size) bytes")
            return EncodedFrame(pointer: out, count: size, payloads: arena.payloads)
        }
    }

    /// Packs a worker's reply carrying `timings` with `timings.encode` set to the time this
    /// very encode took (from the call until the bytes are packed): the frame is packed with a
    /// placeholder, then the 8 bytes of `encode_seconds` — the last field of the last field of
    /// the Envelope, so the frame's last 8 bytes — are overwritten with the measured value.
    public static func encode(_ envelope: Envelope, dtype: WireDType = .f32, measuringEncodeOf timings: WorkerTimings,
                              shared: SharedTensorWriter? = nil) -> EncodedFrame {
        let start = MonotonicClock.seconds()
        var e = envelope
        e.progress = []      // beats only; field 50 would follow the timings
        e.sharedRegion = 0   // requests only; field 41 would follow the timings
        var t = timings
        t.encode = placeholderEncodeSeconds  // non-zero: proto3 packs it, 9 bytes (tag + fixed64)
        e.timings = t
        let frame = encode(e, dtype: dtype, shared: shared)
        guard let p = frame.pointer, frame.count >= 9 else { return frame }
        let tagOffset = frame.count - 9
        // Field 5, wire type 1 (64-bit): tag byte 0x29; the placeholder's bits follow.
        precondition(p.load(fromByteOffset: tagOffset, as: UInt8.self) == 0x29
                     && p.loadUnaligned(fromByteOffset: tagOffset + 1, as: UInt64.self) == placeholderEncodeSeconds.bitPattern.littleEndian,
                     "WorkerTimings.encode_seconds is not the frame's last field")
        let seconds = MonotonicClock.seconds() - start
        p.storeBytes(of: seconds.bitPattern.littleEndian, toByteOffset: tagOffset + 1, as: UInt64.self)
        return frame
    }

    private static let placeholderEncodeSeconds = 1.0

    static func cDType(_ d: WireDType?) -> Thor__DType {
        switch d {
        case .none: return THOR__DTYPE__DTYPE_UNSPECIFIED
        case .f32: return THOR__DTYPE__DTYPE_F32
        case .bf16: return THOR__DTYPE__DTYPE_BF16
        }
    }

    static func tensor(_ t: Tensor, _ arena: Arena, _ dtype: WireDType) -> UnsafeMutablePointer<Thor__Tensor> {
        arena.make(Thor__Tensor.self) { p in
            thor__tensor__init(p)
            let shape = arena.array(Int64.self, count: t.shape.count)
            for (i, d) in t.shape.enumerated() { shape[i] = Int64(d) }
            p.pointee.n_shape = t.shape.count
            p.pointee.shape = shape
            p.pointee.dtype = cDType(dtype)
            p.pointee.frame = UInt32(arena.payloads.count)
            switch dtype {
            case .f32:
                let bytes = UnsafeRawBufferPointer(start: t.pointer, count: t.count * 4)
                if t.count > 0, let place = arena.shared?.place(bytes) {
                    p.pointee.frame = 0
                    p.pointee.ring = place.ring; p.pointee.position = place.position; p.pointee.length = UInt64(bytes.count)
                } else {
                    arena.payloads.append(WirePayload(bytes: bytes, owner: t))
                }
            case .bf16:
                let out = MallocedBytes(count: t.count * 2)
                TensorCodec.encodeBF16(t.pointer, count: t.count, into: out.pointer)
                arena.payloads.append(WirePayload(bytes: UnsafeRawBufferPointer(start: out.pointer, count: out.count), owner: out))
            }
        }
    }

    static func key(_ k: ExpertKey, _ arena: Arena) -> UnsafeMutablePointer<Thor__ExpertKey> {
        arena.make(Thor__ExpertKey.self) { p in
            thor__expert_key__init(p)
            p.pointee.layer = UInt32(k.layer); p.pointee.expert = UInt32(k.expert)
        }
    }

    static func keys(_ ks: [ExpertKey], _ arena: Arena) -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<Thor__ExpertKey>?>) {
        (ks.count, arena.pointers(ks.map { key($0, arena) }))
    }

    static func batches(_ bs: [ExpertBatch], _ arena: Arena, _ dtype: WireDType)
        -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<Thor__ExpertBatch>?>) {
        let items = bs.map { b in
            arena.make(Thor__ExpertBatch.self) { p in
                thor__expert_batch__init(p)
                p.pointee.expert = UInt32(b.expert)
                p.pointee.tokens = tensor(b.tokens, arena, dtype)
            }
        }
        return (bs.count, arena.pointers(items))
    }

    static func states(_ s: [ExpertKey: [String: Tensor]], _ arena: Arena, _ dtype: WireDType)
        -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<Thor__ExpertState>?>) {
        let items = s.keys.sorted().map { k in
            arena.make(Thor__ExpertState.self) { p in
                thor__expert_state__init(p)
                p.pointee.key = key(k, arena)
                let named = s[k]!.keys.sorted().map { name in
                    arena.make(Thor__NamedTensor.self) { n in
                        thor__named_tensor__init(n)
                        n.pointee.name = arena.string(name)
                        n.pointee.tensor = tensor(s[k]![name]!, arena, dtype)
                    }
                }
                p.pointee.n_tensors = named.count
                p.pointee.tensors = arena.pointers(named)
            }
        }
        return (items.count, arena.pointers(items))
    }

    static func activation(_ a: Activation) -> Thor__Activation {
        switch a {
        case .relu: return THOR__ACTIVATION__ACTIVATION_RELU
        case .gelu: return THOR__ACTIVATION__ACTIVATION_GELU
        case .swiglu: return THOR__ACTIVATION__ACTIVATION_SWIGLU
        }
    }

    static func setBody(_ e: UnsafeMutablePointer<Thor__Envelope>, _ m: WireMessage, _ arena: Arena, _ dtype: WireDType) {
        switch m {
        case .register(let r):
            e.pointee.body_case = THOR__ENVELOPE__BODY_REGISTER
            e.pointee.register_ = arena.make(Thor__Register.self) { p in
                thor__register__init(p)
                p.pointee.worker_id = arena.string(r.workerID)
                p.pointee.threads = UInt32(clamping: r.threads)
                p.pointee.capacity_bytes = r.capacityBytes
                p.pointee.pid = Int64(r.pid)
                p.pointee.hostname = arena.string(r.hostname)
                p.pointee.incarnation = r.incarnation
                (p.pointee.n_hosted, p.pointee.hosted) = keys(r.hosted, arena)
                p.pointee.session = r.session
                p.pointee.committed_step = UInt64(max(0, r.committedStep))
                if let o = r.sharedRegion {
                    p.pointee.shared_region = arena.string(o.name)
                    p.pointee.shared_region_token = o.token
                    p.pointee.shared_ring_bytes = UInt64(o.ringBytes)
                }
            }
        case .assign(let a):
            e.pointee.body_case = THOR__ENVELOPE__BODY_ASSIGN
            e.pointee.assign = arena.make(Thor__Assign.self) { p in
                thor__assign__init(p)
                p.pointee.spec = arena.make(Thor__ExpertSpec.self) { s in
                    thor__expert_spec__init(s)
                    s.pointee.model_dim = UInt32(clamping: a.spec.modelDim)
                    s.pointee.hidden_dim = UInt32(clamping: a.spec.hiddenDim)
                    s.pointee.activation = activation(a.spec.activation)
                    s.pointee.seed = a.spec.seed
                    s.pointee.adam = arena.make(Thor__AdamSettings.self) { d in
                        thor__adam_settings__init(d)
                        d.pointee.beta1 = a.spec.adam.beta1; d.pointee.beta2 = a.spec.adam.beta2
                        d.pointee.epsilon = a.spec.adam.epsilon; d.pointee.weight_decay = a.spec.adam.weightDecay
                    }
                }
                (p.pointee.n_keys, p.pointee.keys) = keys(a.keys, arena)
                p.pointee.placement_epoch = a.placementEpoch
                p.pointee.keep_existing = a.keepExisting ? 1 : 0
                p.pointee.blas_core = arena.string(a.blasCore)
            }
        case .forward(let layer, let training, let bs, let reply):
            e.pointee.body_case = THOR__ENVELOPE__BODY_FORWARD
            e.pointee.forward = arena.make(Thor__ForwardRequest.self) { p in
                thor__forward_request__init(p)
                p.pointee.layer = UInt32(layer); p.pointee.training = training ? 1 : 0
                (p.pointee.n_batches, p.pointee.batches) = batches(bs, arena, dtype)
                p.pointee.reply_dtype = cDType(reply)
            }
        case .forwardReply(let layer, let outs):
            e.pointee.body_case = THOR__ENVELOPE__BODY_FORWARD_REPLY
            e.pointee.forward_reply = arena.make(Thor__ForwardReply.self) { p in
                thor__forward_reply__init(p)
                p.pointee.layer = UInt32(layer)
                (p.pointee.n_outputs, p.pointee.outputs) = batches(outs, arena, dtype)
            }
        case .backward(let layer, let gs, let reply):
            e.pointee.body_case = THOR__ENVELOPE__BODY_BACKWARD
            e.pointee.backward = arena.make(Thor__BackwardRequest.self) { p in
                thor__backward_request__init(p)
                p.pointee.layer = UInt32(layer)
                (p.pointee.n_gradients, p.pointee.gradients) = batches(gs, arena, dtype)
                p.pointee.reply_dtype = cDType(reply)
            }
        case .backwardReply(let layer, let gs):
            e.pointee.body_case = THOR__ENVELOPE__BODY_BACKWARD_REPLY
            e.pointee.backward_reply = arena.make(Thor__BackwardReply.self) { p in
                thor__backward_reply__init(p)
                p.pointee.layer = UInt32(layer)
                (p.pointee.n_input_gradients, p.pointee.input_gradients) = batches(gs, arena, dtype)
            }
        case .gradNormRequest:
            e.pointee.body_case = THOR__ENVELOPE__BODY_GRAD_NORM
            e.pointee.grad_norm = arena.make(Thor__GradNormRequest.self) { thor__grad_norm_request__init($0) }
        case .gradNormReport(let norms):
            e.pointee.body_case = THOR__ENVELOPE__BODY_GRAD_NORM_REPORT
            e.pointee.grad_norm_report = arena.make(Thor__GradNormReport.self) { p in
                thor__grad_norm_report__init(p)
                let items = norms.keys.sorted().map { k in
                    arena.make(Thor__ExpertNorm.self) { n in
                        thor__expert_norm__init(n)
                        n.pointee.key = key(k, arena); n.pointee.squared_norm = norms[k]!
                    }
                }
                p.pointee.n_norms = items.count
                p.pointee.norms = arena.pointers(items)
            }
        case .step(let lr, let clip, let step):
            e.pointee.body_case = THOR__ENVELOPE__BODY_STEP
            e.pointee.step = arena.make(Thor__StepRequest.self) { p in
                thor__step_request__init(p)
                p.pointee.learning_rate = lr; p.pointee.clip_scale = clip; p.pointee.step = UInt64(max(0, step))
            }
        case .zeroGradients:
            e.pointee.body_case = THOR__ENVELOPE__BODY_ZERO_GRADIENTS
            e.pointee.zero_gradients = arena.make(Thor__ZeroGradients.self) { thor__zero_gradients__init($0) }
        case .exportRequest(let ks):
            e.pointee.body_case = THOR__ENVELOPE__BODY_EXPORT_STATE
            e.pointee.export_state = arena.make(Thor__ExportRequest.self) { p in
                thor__export_request__init(p)
                (p.pointee.n_keys, p.pointee.keys) = keys(ks, arena)
            }
        case .expertStates(let s):
            e.pointee.body_case = THOR__ENVELOPE__BODY_EXPERT_STATES
            e.pointee.expert_states = arena.make(Thor__ExpertStates.self) { p in
                thor__expert_states__init(p)
                (p.pointee.n_experts, p.pointee.experts) = states(s, arena, dtype)
            }
        case .importRequest(let s):
            e.pointee.body_case = THOR__ENVELOPE__BODY_IMPORT_STATE
            e.pointee.import_state = arena.make(Thor__ImportRequest.self) { p in
                thor__import_request__init(p)
                (p.pointee.n_experts, p.pointee.experts) = states(s, arena, dtype)
            }
        case .gradientsRequest(let ks):
            e.pointee.body_case = THOR__ENVELOPE__BODY_GRADIENTS_REQUEST
            e.pointee.gradients_request = arena.make(Thor__GradientsRequest.self) { p in
                thor__gradients_request__init(p)
                (p.pointee.n_keys, p.pointee.keys) = keys(ks, arena)
            }
        case .applyGradients(let s):
            e.pointee.body_case = THOR__ENVELOPE__BODY_APPLY_GRADIENTS
            e.pointee.apply_gradients = arena.make(Thor__ApplyGradients.self) { p in
                thor__apply_gradients__init(p)
                (p.pointee.n_experts, p.pointee.experts) = states(s, arena, dtype)
            }
        case .heartbeat(let seq, let nanos):
            e.pointee.body_case = THOR__ENVELOPE__BODY_HEARTBEAT
            e.pointee.heartbeat = arena.make(Thor__Heartbeat.self) { p in
                thor__heartbeat__init(p)
                p.pointee.sequence = seq; p.pointee.sent_unix_nanos = nanos
            }
        case .shutdown(let reason):
            e.pointee.body_case = THOR__ENVELOPE__BODY_SHUTDOWN
            e.pointee.shutdown = arena.make(Thor__Shutdown.self) { p in
                thor__shutdown__init(p)
                p.pointee.reason = arena.string(reason)
            }
        case .ack:
            e.pointee.body_case = THOR__ENVELOPE__BODY_ACK
            e.pointee.ack = arena.make(Thor__Ack.self) { thor__ack__init($0) }
        case .error(let code, let message):
            e.pointee.body_case = THOR__ENVELOPE__BODY_ERROR
            e.pointee.error = arena.make(Thor__Error.self) { p in
                thor__error__init(p)
                p.pointee.code = Thor__ErrorCode(rawValue: code.rawValue)
                p.pointee.message = arena.string(message)
            }
        }
    }
}
