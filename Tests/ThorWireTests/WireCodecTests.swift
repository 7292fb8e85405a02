import XCTest
import ThorTensor
import ThorExperts
import ThorWire

final class WireCodecTests: XCTestCase {
    func tensor(_ shape: [Int], seed: UInt64) -> Tensor {
        var rng = RandomGenerator(seed: seed)
        let t = Tensor(shape: shape)
        rng.fillUniform(t.pointer, count: t.count, limit: 3)
        return t
    }

    func roundTrip(_ e: Envelope, dtype: WireDType = .f32) throws -> Envelope {
        try WireCodec.decode(WireCodec.encode(e, dtype: dtype))
    }

    func testForwardRoundTripIsBitExactInF32() throws {
        let batches = [ExpertBatch(expert: 3, tokens: tensor([5, 7], seed: 1)),
                       ExpertBatch(expert: 0, tokens: tensor([0, 7], seed: 2)),
                       ExpertBatch(expert: 9, tokens: tensor([1, 7], seed: 3))]
        let back = try roundTrip(Envelope(requestID: 42, sender: "coordinator", session: 7,
                                          message: .forward(layer: 2, training: true, batches: batches, replyDType: .bf16)))
        XCTAssertEqual(back.requestID, 42)
        XCTAssertEqual(back.sender, "coordinator")
        XCTAssertEqual(back.session, 7)
        XCTAssertEqual(back.version, thorProtocolVersion)
        guard case .forward(let layer, let training, let got, let reply) = back.message else { return XCTFail("got \(back.message.name)") }
        XCTAssertEqual(layer, 2)
        XCTAssertTrue(training)
        XCTAssertEqual(reply, .bf16)
        XCTAssertEqual(got.map(\.expert), [3, 0, 9])
        for (a, b) in zip(got, batches) { XCTAssertTrue(a.tokens.bitwiseEqual(b.tokens), "expert \(a.expert)") }
    }

    func testControlMessagesRoundTrip() throws {
        let spec = ExpertSpec(modelDim: 8, hiddenDim: 12, activation: .swiglu, seed: 99,
                              adam: AdamSettings(beta1: 0.8, beta2: 0.9, epsilon: 1e-6, weightDecay: 0.01))
        let keys = [ExpertKey(layer: 1, expert: 2), ExpertKey(layer: 0, expert: 5)]
        if case .assign(let a) = try roundTrip(Envelope(requestID: 1, message: .assign(Assignment(spec: spec, keys: keys, placementEpoch: 3, keepExisting: true)))).message {
            XCTAssertEqual(a, Assignment(spec: spec, keys: keys, placementEpoch: 3, keepExisting: true))
        } else { XCTFail("assign") }
        let reg = Registration(workerID: "w1", threads: 2, capacityBytes: 1 << 33, pid: 1234, hostname: "box",
                               incarnation: .max, hosted: keys, session: 0xABCD_EF01_2345, committedStep: 417)
        if case .register(let r) = try roundTrip(Envelope(requestID: 0, message: .register(reg))).message {
            XCTAssertEqual(r, reg)
        } else { XCTFail("register") }
        let norms = [keys[0]: 1.25e-3, keys[1]: 7.0]
        if case .gradNormReport(let n) = try roundTrip(Envelope(requestID: 2, message: .gradNormReport(norms))).message {
            XCTAssertEqual(n, norms)
        } else { XCTFail("norms") }
        if case .step(let lr, let clip, let step) = try roundTrip(Envelope(requestID: 3, message: .step(learningRate: 5e-4, clipScale: 0.5, step: 17))).message {
            XCTAssertEqual(lr, 5e-4); XCTAssertEqual(clip, 0.5); XCTAssertEqual(step, 17)
        } else { XCTFail("step") }
        if case .error(let code, let text) = try roundTrip(Envelope(requestID: 4, message: .error(code: .unknownExpert, message: "L0E9 ∉ here"))).message {
            XCTAssertEqual(code, .unknownExpert); XCTAssertEqual(text, "L0E9 ∉ here")
        } else { XCTFail("error") }
        for m: WireMessage in [.ack, .zeroGradients, .gradNormRequest, .shutdown(reason: "bye"),
                               .heartbeat(sequence: 9, sentUnixNanos: 10), .exportRequest(keys: keys)] {
            XCTAssertEqual(try roundTrip(Envelope(requestID: 5, message: m)).message.name, m.name, m.name)
        }
    }

    func testExpertStatesRoundTrip() throws {
        let k = ExpertKey(layer: 0, expert: 1)
        let state = [k: ["moe.0.experts.1.w1": tensor([3, 4], seed: 5), "moe.0.experts.1.b1": tensor([4], seed: 6)]]
        guard case .importRequest(let got) = try roundTrip(Envelope(requestID: 1, message: .importRequest(state))).message else {
            return XCTFail("import")
        }
        XCTAssertEqual(Set(got[k]!.keys), Set(state[k]!.keys))
        for (name, t) in state[k]! { XCTAssertTrue(got[k]![name]!.bitwiseEqual(t), name) }
    }

    func testBF16RoundsToNearestEven() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0).
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(1 + 0x1p-8)), 1)
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(1 + 3 * 0x1p-8)), 1 + 0x1p-6)
        // Just above halfway rounds up; just below rounds down.
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(1 + 0x1p-8 + 0x1p-20)), 1 + 0x1p-7)
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(1 + 0x1p-8 - 0x1p-20)), 1)
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(-2.5)), -2.5)
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(.infinity)), .infinity)
        XCTAssertTrue(TensorCodec.float(bf16: TensorCodec.bf16Bits(.nan)).isNaN)
        // Rounding never overflows a finite value into NaN.
        XCTAssertEqual(TensorCodec.float(bf16: TensorCodec.bf16Bits(.greatestFiniteMagnitude)), .infinity)
    }

    func testBF16WireRoundTripHalvesBytesAndMatchesRounding() throws {
        let x = tensor([6, 5], seed: 8)
        let batches = [ExpertBatch(expert: 1, tokens: x)]
        let f32 = WireCodec.encode(Envelope(requestID: 1, message: .forwardReply(layer: 0, outputs: batches)), dtype: .f32)
        let bf16 = WireCodec.encode(Envelope(requestID: 1, message: .forwardReply(layer: 0, outputs: batches)), dtype: .bf16)
        // Half the tensor bytes; the Envelope frames differ only in the dtype field.
        XCTAssertEqual(f32.payloads.map(\.bytes.count), [x.count * 4])
        XCTAssertEqual(bf16.payloads.map(\.bytes.count), [x.count * 2])
        XCTAssertEqual(f32.count, bf16.count)
        guard case .forwardReply(_, let got) = try WireCodec.decode(bf16).message else { return XCTFail() }
        let expected = Tensor(copying: x)
        TensorCodec.roundToBF16(expected)
        XCTAssertTrue(got[0].tokens.bitwiseEqual(expected))
        XCTAssertFalse(got[0].tokens.bitwiseEqual(x), "bf16 is lossy for random values")
        for i in 0..<x.count { XCTAssertEqual(got[0].tokens[i], x[i], accuracy: abs(x[i]) * 0x1p-8) }
    }

    func testVersionMismatchIsNamedWithRequestID() {
        let frame = WireCodec.encode(Envelope(requestID: 77, message: .ack, version: 2))
        XCTAssertThrowsError(try frame.withUnsafeBytes { try WireCodec.decode($0) }) { e in
            XCTAssertEqual(e as? WireError, .versionMismatch(received: 2, expected: thorProtocolVersion, requestID: 77))
            XCTAssertTrue("\(e)".contains("version 2"), "\(e)")
            XCTAssertEqual((e as? WireError)?.code, .versionMismatch)
        }
    }

    func testMalformedTruncatedAndOversizedFramesAreRejected() throws {
        let garbage: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x13]
        try garbage.withUnsafeBytes { b in
            XCTAssertThrowsError(try WireCodec.decode(b)) { XCTAssertEqual(($0 as? WireError)?.code, .malformed, "\($0)") }
        }
        let full = WireCodec.encode(Envelope(requestID: 1, message: .forward(layer: 0, training: false,
                                             batches: [ExpertBatch(expert: 0, tokens: tensor([4, 8], seed: 1))], replyDType: nil)))
        XCTAssertThrowsError(try full.withUnsafeBytes { try WireCodec.decode(UnsafeRawBufferPointer(rebasing: $0[0..<($0.count / 2)])) }) { e in
            XCTAssertEqual((e as? WireError)?.code, .malformed)
            XCTAssertTrue("\(e)".contains("truncated"), "\(e)")
        }
        XCTAssertThrowsError(try full.withUnsafeBytes { try WireCodec.decode($0, payloads: full.payloads, maxFrameBytes: 64) }) { e in
            XCTAssertEqual(e as? WireError, .tooLarge(bytes: full.totalCount, limit: 64))
        }
        try [UInt8]().withUnsafeBytes { b in
            XCTAssertThrowsError(try WireCodec.decode(b)) { XCTAssertTrue("\($0)".contains("empty"), "\($0)") }
        }
        // A valid Envelope with no body.
        var env = ProtobufBytes(); env.uint(1, UInt64(thorProtocolVersion)); env.uint(2, 5)
        try env.bytes.withUnsafeBytes { b in
            XCTAssertThrowsError(try WireCodec.decode(b)) { XCTAssertTrue("\($0)".contains("no message body"), "\($0)") }
        }
    }

    /// Tensor frames for a hand-made message (each its own malloc'ed, aligned buffer).
    func payloads(_ frames: [[UInt8]]) -> [WirePayload] {
        frames.map { f in
            let m = MallocedBytes(count: f.count)
            f.withUnsafeBytes { if $0.count > 0 { m.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            return WirePayload(bytes: UnsafeRawBufferPointer(start: m.pointer, count: m.count), owner: m)
        }
    }

    func testBadTensorsAreNamed() throws {
        func check(_ ts: [ProtobufBytes], frames: [[UInt8]], code: WireErrorCode = .badTensor, _ needle: String, line: UInt = #line) throws {
            let frame = ProtobufBytes.forwardEnvelope(requestID: 3, layer: 0, training: false, batches: ts.map { (2, $0) })
            try frame.withUnsafeBytes { b in
                XCTAssertThrowsError(try WireCodec.decode(b, payloads: payloads(frames)), line: line) { e in
                    XCTAssertEqual((e as? WireError)?.code, code, "\(e)", line: line)
                    XCTAssertTrue("\(e)".contains(needle), "\(e) should mention \(needle)", line: line)
                }
            }
        }
        let zeros24 = [UInt8](repeating: 0, count: 24)
        try check([.tensor(shape: [2, 3], dtype: 1)], frames: [[UInt8](repeating: 0, count: 20)], "20 bytes")
        try check([.tensor(shape: [2, 3], dtype: 2)], frames: [zeros24], "24 bytes")
        try check([.tensor(shape: [2, -3], dtype: 1)], frames: [[]], "negative")
        try check([.tensor(shape: [2, 3], dtype: 0)], frames: [zeros24], "dtype")
        try check([.tensor(shape: [2, 3], dtype: 9)], frames: [zeros24], "dtype")
        try check([.tensor(shape: [1 << 40, 1 << 40], dtype: 1)], frames: [[]], "too many elements")
        // Malformed multipart messages (protocol version 3): a missing frame, an index out of
        // range, a frame used twice, a frame nobody references, inline (version 2) bytes.
        try check([.tensor(shape: [2, 3], dtype: 1)], frames: [], "tensor frame 0 is out of range (the message has 0 tensor frames)")
        try check([.tensor(shape: [2, 3], dtype: 1, frame: 5)], frames: [zeros24, zeros24], "tensor frame 5 is out of range")
        try check([.tensor(shape: [2, 3], dtype: 1), .tensor(shape: [2, 3], dtype: 1)], frames: [zeros24, zeros24], "referenced twice")
        try check([.tensor(shape: [2, 3], dtype: 1)], frames: [zeros24, zeros24], code: .malformed, "tensor frame 1 of 2 is not referenced")
        try check([.tensor(shape: [2, 3], dtype: 1, data: zeros24)], frames: [], "inline")
        // And a well-formed hand-made message decodes, tensors taken from their frames by index.
        let ok = ProtobufBytes.forwardEnvelope(requestID: 3, layer: 0, training: false,
                                               batches: [(2, .tensor(shape: [1, 2], dtype: 1, frame: 1)),
                                                         (4, .tensor(shape: [1, 1], dtype: 2, frame: 0))])
        let frames = payloads([[0x80, 0x40], [0, 0, 0x80, 0x3F, 0, 0, 0, 0x40]])
        ok.withUnsafeBytes { b in
            guard case .forward(_, _, let batches, _)? = try? WireCodec.decode(b, payloads: frames).message else { return XCTFail("decode") }
            XCTAssertEqual(batches[0].tokens.array, [1, 2])
            XCTAssertEqual(batches[1].tokens.array, [4])
            // f32 is used in place: the tensor's storage is the received frame's bytes.
            XCTAssertEqual(UnsafeRawPointer(batches[0].tokens.pointer), frames[1].bytes.baseAddress)
        }
    }

    func testEncodeSendsF32TensorsInPlaceAndNumbersFramesInOrder() throws {
        let a = tensor([3, 4], seed: 1), b = tensor([2, 4], seed: 2), w = tensor([4, 4], seed: 3)
        let fwd = WireCodec.encode(Envelope(requestID: 1, message: .forward(layer: 0, training: true,
            batches: [ExpertBatch(expert: 1, tokens: a), ExpertBatch(expert: 5, tokens: b)], replyDType: nil)))
        XCTAssertEqual(fwd.payloads.map { $0.bytes.baseAddress }, [UnsafeRawPointer(a.pointer), UnsafeRawPointer(b.pointer)])
        XCTAssertEqual(fwd.totalCount, fwd.count + (a.count + b.count) * 4)
        XCTAssertLessThan(fwd.count, 64, "the Envelope frame holds no tensor bytes")
        // Nested tensors (expert states) travel the same way and come back bit for bit.
        let key = ExpertKey(layer: 1, expert: 2)
        let states = WireCodec.encode(Envelope(requestID: 2, message: .importRequest([key: ["w1": w, "w2": a]])))
        XCTAssertEqual(states.payloads.count, 2)
        guard case .importRequest(let got) = try WireCodec.decode(states).message else { return XCTFail() }
        XCTAssertTrue(got[key]!["w1"]!.bitwiseEqual(w))
        XCTAssertTrue(got[key]!["w2"]!.bitwiseEqual(a))
        XCTAssertNotEqual(got[key]!["w1"]!.pointer, w.pointer, "decode(EncodedFrame) copies, as a wire would")
        // Dropping a payload (a missing frame) is refused.
        XCTAssertThrowsError(try states.withUnsafeBytes { try WireCodec.decode($0, payloads: Array(states.payloads.prefix(1))) }) {
            XCTAssertTrue("\($0)".contains("out of range"), "\($0)")
        }
    }
}
