import CThorProto
import ThorTensor
import ThorExperts
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension WireCodec {
    /// Default limit on one frame: 1 GiB.
    public static let defaultMaxFrameBytes = 1 << 30

    /// Unpacks one message: the Envelope frame `bytes` and the tensor frames after it.
    /// Throws `WireError` naming the problem for an oversized, undecodable (malformed or
    /// truncated), wrong-version or bodiless message, for a tensor referencing a missing
    /// frame or a frame already used, for a tensor frame whose byte count does not match
    /// shape × dtype size, and for tensor frames no tensor references.
    ///
    /// f32 tensors are used in place: the decoded tensor's storage is the payload's
    /// bytes and it holds the payload's owner (e.g. the received ZeroMQ frame). A payload
    /// that is not Float-aligned is copied instead.
    ///
    /// Protocol 5: a tensor in a shared ring (`Tensor.ring` ≠ 0) is read through `shared` (the
    /// link's ring the peer writes), which checks the reference and lends the bytes in place;
    /// without `shared` such a tensor is `BAD_TENSOR`.
    public static func decode(_ bytes: UnsafeRawBufferPointer, payloads: [WirePayload] = [],
                              maxFrameBytes: Int = defaultMaxFrameBytes, shared: SharedTensorReader? = nil) throws -> Envelope {
        let total = payloads.reduce(bytes.count) { $0 + $1.bytes.count }
        guard total <= maxFrameBytes else { throw WireError.tooLarge(bytes: total, limit: maxFrameBytes) }
        guard bytes.count > 0 else { throw WireError.malformed("empty frame (0 bytes)") }
        // Swift's allocator, so f32 tensor bytes can become `Tensor` storage without a copy.
        var allocator = ProtobufCAllocator(
            alloc: { _, size in UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 16) },
            free: { _, pointer in pointer?.deallocate() },
            allocator_data: nil)
        guard let e = thor__envelope__unpack(&allocator, bytes.count, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)) else {
            throw WireError.malformed("\(bytes.count) bytes are not a valid thor Envelope (truncated or corrupt protobuf)")
        }
        defer { thor__envelope__free_unpacked(e, &allocator) }
        let env = e.pointee
        guard env.protocol_version == thorProtocolVersion else {
            if env.protocol_version == 0 {
                throw WireError.malformed("Envelope has no protocol_version (not a thor frame, or version 0)")
            }
            throw WireError.versionMismatch(received: env.protocol_version, expected: thorProtocolVersion,
                                            requestID: env.request_id)
        }
        let frames = TensorFrames(payloads, shared: shared)
        let message = try body(env, frames)
        if let unused = frames.used.firstIndex(of: false) {
            throw WireError.malformed("tensor frame \(unused) of \(payloads.count) is not referenced by any tensor")
        }
        if let end = frames.sharedEnd { shared?.commit(end: end) }
        var timings: WorkerTimings? = nil
        if let t = env.timings?.pointee {
            timings = WorkerTimings(decode: t.decode_seconds, queue: t.queue_seconds, compute: t.compute_seconds,
                                    computeCPU: t.compute_cpu_seconds, encode: t.encode_seconds)
        }
        let shard = env.shard.map { Shard(index: Int($0.pointee.index), count: Int($0.pointee.count)) }
        let progress = (0..<env.n_progress).compactMap { i in
            env.progress[i].map { RequestProgress(session: $0.pointee.session, requestID: $0.pointee.request_id,
                                                  replyBytes: $0.pointee.reply_bytes) }
        }
        return Envelope(requestID: env.request_id, sender: string(env.sender), session: env.session,
                        message: message, version: env.protocol_version, timings: timings, shard: shard,
                        progress: progress, sharedRegion: env.shared_region)
    }

    static func string(_ p: UnsafeMutablePointer<CChar>?) -> String {
        guard let p else { return "" }
        return String(validatingCString: p) ?? String(decoding: UnsafeRawBufferPointer(start: p, count: strlen(p)), as: UTF8.self)
    }

    static func dtype(_ d: Thor__DType) -> WireDType? {
        switch d {
        case THOR__DTYPE__DTYPE_F32: return .f32
        case THOR__DTYPE__DTYPE_BF16: return .bf16
        default: return nil
        }
    }

    static func replyDType(_ d: Thor__DType) throws -> WireDType? {
        if d == THOR__DTYPE__DTYPE_UNSPECIFIED { return nil }
        guard let t = dtype(d) else { throw WireError.malformed("unknown reply dtype \(d.rawValue)") }
        return t
    }

    /// The tensor frames of one message being decoded, and which are used.
    final class TensorFrames {
        let payloads: [WirePayload]
        var used: [Bool]
        let shared: SharedTensorReader?
        /// The end of the furthest shared-ring tensor of the message (nil: none).
        var sharedEnd: UInt64?
        init(_ payloads: [WirePayload], shared: SharedTensorReader? = nil) {
            self.payloads = payloads; self.shared = shared; used = Array(repeating: false, count: payloads.count)
        }
    }

    /// The tensor of an unpacked message, its bytes taken from its frame: f32 in place
    /// (borrowing the frame), bf16 widened into new storage.
    static func tensor(_ p: UnsafeMutablePointer<Thor__Tensor>?, _ frames: TensorFrames, what: String) throws -> Tensor {
        guard let p else { throw WireError.badTensor("\(what): tensor is missing") }
        let shape = (0..<p.pointee.n_shape).map { p.pointee.shape[$0] }
        guard let d = dtype(p.pointee.dtype) else {
            throw WireError.badTensor("\(what): dtype \(p.pointee.dtype.rawValue) is missing or unknown")
        }
        guard p.pointee.data.len == 0 else {
            throw WireError.badTensor("\(what): \(p.pointee.data.len) bytes inline (protocol version 3 sends tensor bytes as their own frames)")
        }
        if p.pointee.ring != 0 {
            guard p.pointee.frame == 0 else {
                throw WireError.badTensor("\(what): names both shared ring \(p.pointee.ring) and tensor frame \(p.pointee.frame)")
            }
            guard let reader = frames.shared else {
                throw WireError.badTensor("\(what): is in shared ring \(p.pointee.ring), but this link has no shared region")
            }
            let payload = try reader.payload(ring: p.pointee.ring, position: p.pointee.position, length: p.pointee.length, what: what)
            let n = try TensorCodec.validate(shape: shape, dtype: d, byteCount: payload.bytes.count,
                                             what: "\(what) (shared ring \(p.pointee.ring), position \(p.pointee.position))")
            frames.sharedEnd = max(frames.sharedEnd ?? 0, p.pointee.position + p.pointee.length)
            let dims = shape.map { Int($0) }
            if d == .f32, n > 0, let base = payload.bytes.baseAddress {
                return Tensor(borrowing: UnsafeMutableRawPointer(mutating: base).assumingMemoryBound(to: Float.self),
                              shape: dims, owner: payload.owner)
            }
            return try TensorCodec.decode(shape: shape, dtype: d, bytes: payload.bytes, what: what)
        }
        let index = Int(p.pointee.frame)
        guard index < frames.payloads.count else {
            throw WireError.badTensor("\(what): tensor frame \(index) is out of range (the message has \(frames.payloads.count) tensor frames)")
        }
        guard !frames.used[index] else {
            throw WireError.badTensor("\(what): tensor frame \(index) is referenced twice")
        }
        frames.used[index] = true
        let payload = frames.payloads[index]
        let n = try TensorCodec.validate(shape: shape, dtype: d, byteCount: payload.bytes.count, what: "\(what) (tensor frame \(index))")
        let dims = shape.map { Int($0) }
        if d == .f32, n > 0, let base = payload.bytes.baseAddress,
           Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 {
            return Tensor(borrowing: UnsafeMutableRawPointer(mutating: base).assumingMemoryBound(to: Float.self),
                          shape: dims, owner: payload.owner)
        }
        return try TensorCodec.decode(shape: shape, dtype: d, bytes: payload.bytes, what: what)
    }

    static func key(_ p: UnsafeMutablePointer<Thor__ExpertKey>?, what: String) throws -> ExpertKey {
        guard let p else { throw WireError.malformed("\(what): expert key is missing") }
        return ExpertKey(layer: Int(p.pointee.layer), expert: Int(p.pointee.expert))
    }

    static func keys(_ n: Int, _ a: UnsafeMutablePointer<UnsafeMutablePointer<Thor__ExpertKey>?>?) throws -> [ExpertKey] {
        try (0..<n).map { try key(a![$0], what: "key \($0)") }
    }

    static func batches(_ n: Int, _ a: UnsafeMutablePointer<UnsafeMutablePointer<Thor__ExpertBatch>?>?, _ frames: TensorFrames,
                        what: String) throws -> [ExpertBatch] {
        try (0..<n).map { i in
            guard let b = a![i] else { throw WireError.malformed("\(what) \(i) is missing") }
            let expert = Int(b.pointee.expert)
            return ExpertBatch(expert: expert, tokens: try tensor(b.pointee.tokens, frames, what: "\(what) \(i) (expert \(expert))"))
        }
    }

    static func states(_ n: Int, _ a: UnsafeMutablePointer<UnsafeMutablePointer<Thor__ExpertState>?>?, _ frames: TensorFrames) throws -> [ExpertKey: [String: Tensor]] {
        var r: [ExpertKey: [String: Tensor]] = [:]
        for i in 0..<n {
            guard let s = a![i] else { throw WireError.malformed("expert state \(i) is missing") }
            let k = try key(s.pointee.key, what: "expert state \(i)")
            guard r[k] == nil else { throw WireError.malformed("expert \(k) appears twice in one state message") }
            var tensors: [String: Tensor] = [:]
            for j in 0..<s.pointee.n_tensors {
                guard let nt = s.pointee.tensors[j] else { throw WireError.malformed("tensor \(j) of \(k) is missing") }
                let name = string(nt.pointee.name)
                guard tensors[name] == nil else { throw WireError.malformed("tensor \(name) of \(k) appears twice") }
                tensors[name] = try tensor(nt.pointee.tensor, frames, what: name)
            }
            r[k] = tensors
        }
        return r
    }

    static func activation(_ a: Thor__Activation) throws -> Activation {
        switch a {
        case THOR__ACTIVATION__ACTIVATION_RELU: return .relu
        case THOR__ACTIVATION__ACTIVATION_GELU: return .gelu
        case THOR__ACTIVATION__ACTIVATION_SWIGLU: return .swiglu
        default: throw WireError.malformed("unknown activation \(a.rawValue)")
        }
    }

    static func body(_ e: Thor__Envelope, _ frames: TensorFrames) throws -> WireMessage {
        switch e.body_case {
        case THOR__ENVELOPE__BODY_REGISTER:
            let r = e.register_!.pointee
            return .register(Registration(workerID: string(r.worker_id), threads: Int(r.threads),
                                          capacityBytes: r.capacity_bytes, pid: Int(r.pid), hostname: string(r.hostname),
                                          incarnation: r.incarnation, hosted: try keys(r.n_hosted, r.hosted),
                                          session: r.session, committedStep: Int(clamping: r.committed_step),
                                          sharedRegion: r.shared_region_token == 0 ? nil
                                            : SharedRegionOffer(name: string(r.shared_region), token: r.shared_region_token,
                                                                ringBytes: Int(clamping: r.shared_ring_bytes))))
        case THOR__ENVELOPE__BODY_ASSIGN:
            let a = e.assign!.pointee
            guard let s = a.spec?.pointee else { throw WireError.malformed("Assign without an ExpertSpec") }
            var adam = AdamSettings()
            if let d = s.adam?.pointee {
                adam = AdamSettings(beta1: d.beta1, beta2: d.beta2, epsilon: d.epsilon, weightDecay: d.weight_decay)
            }
            let spec = ExpertSpec(modelDim: Int(s.model_dim), hiddenDim: Int(s.hidden_dim),
                                  activation: try activation(s.activation), seed: s.seed, adam: adam)
            return .assign(Assignment(spec: spec, keys: try keys(a.n_keys, a.keys),
                                      placementEpoch: a.placement_epoch, keepExisting: a.keep_existing != 0,
                                      blasCore: string(a.blas_core)))
        case THOR__ENVELOPE__BODY_FORWARD:
            let f = e.forward!.pointee
            return .forward(layer: Int(f.layer), training: f.training != 0,
                            batches: try batches(f.n_batches, f.batches, frames, what: "batch"),
                            replyDType: try replyDType(f.reply_dtype))
        case THOR__ENVELOPE__BODY_FORWARD_REPLY:
            let f = e.forward_reply!.pointee
            return .forwardReply(layer: Int(f.layer), outputs: try batches(f.n_outputs, f.outputs, frames, what: "output"))
        case THOR__ENVELOPE__BODY_BACKWARD:
            let b = e.backward!.pointee
            return .backward(layer: Int(b.layer), gradients: try batches(b.n_gradients, b.gradients, frames, what: "gradient"),
                             replyDType: try replyDType(b.reply_dtype))
        case THOR__ENVELOPE__BODY_BACKWARD_REPLY:
            let b = e.backward_reply!.pointee
            return .backwardReply(layer: Int(b.layer),
                                  inputGradients: try batches(b.n_input_gradients, b.input_gradients, frames, what: "input gradient"))
        case THOR__ENVELOPE__BODY_GRAD_NORM:
            return .gradNormRequest
        case THOR__ENVELOPE__BODY_GRAD_NORM_REPORT:
            let r = e.grad_norm_report!.pointee
            var norms: [ExpertKey: Double] = [:]
            for i in 0..<r.n_norms {
                guard let n = r.norms[i] else { throw WireError.malformed("norm \(i) is missing") }
                norms[try key(n.pointee.key, what: "norm \(i)")] = n.pointee.squared_norm
            }
            return .gradNormReport(norms)
        case THOR__ENVELOPE__BODY_STEP:
            let s = e.step!.pointee
            guard s.step >= 1, s.step <= UInt64(Int.max) else { throw WireError.malformed("Step number \(s.step) (steps count from 1)") }
            return .step(learningRate: s.learning_rate, clipScale: s.clip_scale, step: Int(s.step))
        case THOR__ENVELOPE__BODY_ZERO_GRADIENTS:
            return .zeroGradients
        case THOR__ENVELOPE__BODY_EXPORT_STATE:
            let x = e.export_state!.pointee
            return .exportRequest(keys: try keys(x.n_keys, x.keys))
        case THOR__ENVELOPE__BODY_EXPERT_STATES:
            let x = e.expert_states!.pointee
            return .expertStates(try states(x.n_experts, x.experts, frames))
        case THOR__ENVELOPE__BODY_IMPORT_STATE:
            let x = e.import_state!.pointee
            return .importRequest(try states(x.n_experts, x.experts, frames))
        case THOR__ENVELOPE__BODY_GRADIENTS_REQUEST:
            let x = e.gradients_request!.pointee
            return .gradientsRequest(keys: try keys(x.n_keys, x.keys))
        case THOR__ENVELOPE__BODY_APPLY_GRADIENTS:
            let x = e.apply_gradients!.pointee
            return .applyGradients(try states(x.n_experts, x.experts, frames))
        case THOR__ENVELOPE__BODY_HEARTBEAT:
            let h = e.heartbeat!.pointee
            return .heartbeat(sequence: h.sequence, sentUnixNanos: h.sent_unix_nanos)
        case THOR__ENVELOPE__BODY_SHUTDOWN:
            return .shutdown(reason: string(e.shutdown!.pointee.reason))
        case THOR__ENVELOPE__BODY_ACK:
            return .ack
        case THOR__ENVELOPE__BODY_ERROR:
            let x = e.error!.pointee
            return .error(code: WireErrorCode(rawValue: x.code.rawValue) ?? .unspecified, message: string(x.message))
        default:
            throw WireError.malformed("Envelope has no message body (body case \(e.body_case.rawValue))")
        }
    }
}

extension WireCodec {
    /// Decodes an encoded message in this process as a receiver would see it: each tensor
    /// frame is first copied into a fresh buffer (so decoded tensors never alias the
    /// encoded ones). For tests and tools; transports pass the received frames to
    /// `decode(_:payloads:maxFrameBytes:)` instead.
    public static func decode(_ frame: EncodedFrame, maxFrameBytes: Int = defaultMaxFrameBytes) throws -> Envelope {
        let copies = frame.payloads.map { p -> WirePayload in
            let m = MallocedBytes(count: p.bytes.count)
            if p.bytes.count > 0 { memcpy(m.pointer, p.bytes.baseAddress!, p.bytes.count) }
            return WirePayload(bytes: UnsafeRawBufferPointer(start: m.pointer, count: m.count), owner: m)
        }
        return try frame.withUnsafeBytes { try decode($0, payloads: copies, maxFrameBytes: maxFrameBytes) }
    }
}
