import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

extension RawCoordinator {
    /// A `thor worker` with the given extra flags whose Register has arrived.
    static func registered(_ arguments: [String]) throws -> RawCoordinator {
        let raw = try RawCoordinator(workerID: "limited", arguments: arguments)
        guard case .register = try raw.receive().message else { throw ClusterError.launch("no Register from the worker") }
        return raw
    }

    /// One message sent, its reply.
    func request(_ m: WireMessage) throws -> Envelope { try call(m).1 }

    /// Raw bytes sent as the message frame, the reply.
    func send(_ bytes: [UInt8]) throws -> Envelope { try sendRaw([Frame(bytes)]) }
}

/// Protobuf bytes written by hand, for frames the encoder would never produce (absurd shapes).
struct RawProto {
    var bytes: [UInt8] = []
    mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func uint(_ field: Int, _ v: UInt64) { varint(UInt64(field << 3)); varint(v) }
    mutating func bytes(_ field: Int, _ b: [UInt8]) { varint(UInt64(field << 3 | 2)); varint(UInt64(b.count)); bytes += b }
    mutating func message(_ field: Int, _ m: RawProto) { bytes(field, m.bytes) }

    static func tensor(_ shape: [Int64], data: [UInt8] = []) -> RawProto {
        var t = RawProto()
        for d in shape { t.uint(1, UInt64(bitPattern: d)) }
        t.uint(2, 1)
        t.bytes(3, data)
        return t
    }
    static func batch(_ shape: [Int64]) -> RawProto {
        var b = RawProto(); b.uint(1, 0); b.message(2, tensor(shape)); return b
    }
    static func state(_ shape: [Int64]) -> RawProto {
        var key = RawProto(); key.uint(1, 0); key.uint(2, 0)
        var nt = RawProto(); nt.bytes(1, Array("moe.0.experts.0.w1".utf8)); nt.message(2, tensor(shape))
        var s = RawProto(); s.message(1, key); s.message(2, nt)
        return s
    }
    static func envelope(_ field: Int, _ body: RawProto, id: UInt64 = 9) -> [UInt8] {
        var e = RawProto(); e.uint(1, 1); e.uint(2, id); e.message(field, body)
        return e.bytes
    }

    /// One frame per message type that carries a size, each with an absurd dimension.
    static func oversized(_ shape: [Int64]) -> [(String, [UInt8])] {
        var forward = RawProto(); forward.uint(1, 0); forward.uint(2, 1); forward.message(3, batch(shape))
        var forwardReply = RawProto(); forwardReply.message(2, batch(shape))
        var backward = RawProto(); backward.message(2, batch(shape))
        var backwardReply = RawProto(); backwardReply.message(2, batch(shape))
        var states = RawProto(); states.message(1, state(shape))
        var spec = RawProto()
        spec.uint(1, UInt64(UInt32(truncatingIfNeeded: shape.first ?? 0))); spec.uint(2, UInt64(UInt32(truncatingIfNeeded: shape.last ?? 0)))
        spec.uint(3, 1)
        var key = RawProto(); key.uint(1, 0); key.uint(2, 0)
        var assign = RawProto(); assign.message(1, spec); assign.message(2, key)
        var register = RawProto(); register.bytes(1, Array("x".utf8)); register.uint(3, UInt64.max)
        for _ in 0..<1000 { register.message(7, key) }
        return [("Forward", envelope(12, forward)), ("ForwardReply", envelope(13, forwardReply)),
                ("Backward", envelope(14, backward)), ("BackwardReply", envelope(15, backwardReply)),
                ("ExpertStates", envelope(21, states)), ("Import", envelope(22, states)),
                ("Assign", envelope(11, assign)), ("Register", envelope(10, register))]
    }
}

final class WorkerLimitsTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 8, hiddenDim: 16, activation: .gelu, seed: 3)
    let keys = [ExpertKey(layer: 0, expert: 0), ExpertKey(layer: 0, expert: 1)]

    func rows(_ n: Int, expert: Int = 0) -> ExpertBatch {
        let t = Tensor(shape: [n, 8])
        var rng = RandomGenerator(seed: UInt64(n))
        rng.fillUniform(t.pointer, count: t.count, limit: 1)
        return ExpertBatch(expert: expert, tokens: t)
    }

    func expectTooLarge(_ e: Envelope, _ needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard case .error(let code, let message) = e.message else {
            return XCTFail("expected an Error reply, got \(e.message.name)", file: file, line: line)
        }
        XCTAssertEqual(code, .tooLarge, message, file: file, line: line)
        for n in needles { XCTAssertTrue(message.contains(n), "'\(message)' should mention '\(n)'", file: file, line: line) }
    }

    /// An Assign or a batch the worker cannot hold is refused with TOO_LARGE naming the size and the
    /// limit, before anything is allocated; the worker keeps serving with its state unchanged.
    func testOversizedAssignAndBatchAreRefusedAndTheWorkerKeepsServing() throws {
        let w = try RawCoordinator.registered(["--memory-budget", "20000000"])
        defer { w.stop() }
        guard case .ack = try w.request(.assign(Assignment(spec: spec, keys: keys))).message else { return XCTFail("Assign") }
        let reference = InProcessExpertBackend(spec: spec, keys: keys)

        // model_dim = 2^20: w1 alone would be 2^40 elements (the crash in issue 9).
        let huge = ExpertSpec(modelDim: 1 << 20, hiddenDim: 1 << 20, activation: .relu, seed: 1)
        expectTooLarge(try w.request(.assign(Assignment(spec: huge, keys: keys))), ["w1 [1048576, 1048576]", "1099511627776 elements", "2147483647"])
        // Every matrix within the element limit, but 2000 experts of 2 MiB do not fit 20 MB.
        let wide = ExpertSpec(modelDim: 256, hiddenDim: 256, activation: .relu, seed: 1)
        let many = (0..<2000).map { ExpertKey(layer: 0, expert: $0) }
        expectTooLarge(try w.request(.assign(Assignment(spec: wide, keys: many))), ["2000 experts", "memory budget is 20000000 bytes"])
        // A forward whose activations would not fit the budget (200,000 rows × 192 bytes).
        expectTooLarge(try w.request(.forward(layer: 0, training: true, batches: [rows(200_000)], replyDType: nil)),
                       ["200000 rows", "20000000"])
        // Still serving, state as before: the same answers as an untouched backend.
        let x = [rows(5), rows(3, expert: 1)]
        guard case .forwardReply(_, let y) = try w.request(.forward(layer: 0, training: false, batches: x, replyDType: nil)).message else {
            return XCTFail("forward after refusals")
        }
        assertBitwiseEqual(y.map(\.tokens), try reference.forward(layer: 0, batches: x, training: false), "forward after refusals")
        guard case .expertStates(let state) = try w.request(.exportRequest(keys: [])).message else { return XCTFail("export") }
        assertSameState(state, try reference.exportState(), "state after refusals")
        XCTAssertLessThan(w.residentBytes(), 200 << 20, "the refused requests must not have been allocated")
    }

    /// With C micro-batch shards a worker holds up to C − 1 gradient copies of its experts
    /// (docs/data-parallel.md, "Per-shard worker state"). A Backward of a shard > 0 whose new
    /// buffers would pass the budget is refused with TOO_LARGE naming the shard, what it needs and
    /// the budget, and changes nothing; an Assign after a C = 3 step counts 2 copies per expert.
    /// (Before, the buffers were allocated unchecked: the Backward of shard 1 was answered.)
    func testPerShardGradientBuffersCountAgainstTheBudget() throws {
        let experts = 2 * WorkerLimits.expertBytes(spec), buffer = WorkerLimits.shardGradientBytes(spec)
        let f1 = spec.activation.firstProjectionWidth(dFF: spec.hiddenDim)
        let activations = 6 * 4 * (2 * spec.modelDim + f1 + spec.hiddenDim)   // 3 rows for each of 2 experts
        XCTAssertLessThan(activations, 2 * buffer)
        let budget = experts + activations + (2 * buffer - activations) / 2   // fits the requests, not 2 buffers more
        let w = try RawCoordinator.registered(["--memory-budget", String(budget)])
        defer { w.stop() }
        guard case .ack = try w.request(.assign(Assignment(spec: spec, keys: keys))).message else { return XCTFail("Assign") }
        func call(_ m: WireMessage, shard: Int, id: UInt64) throws -> Envelope {
            let f = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: 5, message: m, shard: Shard(index: shard, count: 3)))
            return try w.sendRaw(f.zmqFrames())
        }
        let x = [rows(3), rows(3, expert: 1)]
        for s in 0..<3 {
            guard case .forwardReply = try call(.forward(layer: 0, training: true, batches: x, replyDType: nil), shard: s, id: UInt64(10 + s)).message else {
                return XCTFail("forward of shard \(s)")
            }
        }
        let g = WireMessage.backward(layer: 0, gradients: x, replyDType: nil)
        guard case .backwardReply = try call(g, shard: 0, id: 20).message else { return XCTFail("shard 0 computes into the experts' gradients") }
        expectTooLarge(try call(g, shard: 1, id: 21), ["shard 1 of 3", "2 new per-shard gradient buffers of \(buffer) bytes",
                                                       "need \(experts + 2 * buffer) bytes", "memory budget is \(budget) bytes"])
        // Nothing changed: its forward's activations still wait (the same refusal, not NO_PENDING_FORWARD).
        expectTooLarge(try call(g, shard: 1, id: 22), ["shard 1 of 3"])
        expectTooLarge(try w.request(.assign(Assignment(spec: spec, keys: keys))),
                       ["2 per-shard gradient copies", "3 micro-batch shards", "memory budget is \(budget) bytes"])
    }

    /// Wire fuzz: random frames, mutated valid frames and oversized dimensions in every message
    /// type. Every frame gets one reply, nothing crashes, the experts are unchanged and the
    /// worker's resident memory stays bounded. A few seconds.
    func testWireFuzzGetsAnswersWithoutCrashStateChangeOrGrowth() throws {
        let w = try RawCoordinator.registered([])
        defer { w.stop() }
        guard case .ack = try w.request(.assign(Assignment(spec: spec, keys: keys))).message else { return XCTFail("Assign") }
        guard case .expertStates(let before) = try w.request(.exportRequest(keys: [])).message else { return XCTFail("export") }
        let rssStart = w.residentBytes()

        var answered = 0
        let absurd: [[Int64]] = [[1 << 31, 1 << 31], [Int64.max, 2], [-1, 8], [1 << 40], [3_000_000_000, 8], [0, 1 << 62]]
        for shape in absurd {
            for (name, frame) in RawProto.oversized(shape) {
                let reply = try w.send(frame)
                guard case .error = reply.message else { return XCTFail("\(name) with shape \(shape) answered \(reply.message.name)") }
                answered += 1
            }
        }
        // Valid frames of the read-only kinds, to mutate.
        let seeds: [[UInt8]] = [
            WireCodec.encode(Envelope(requestID: 1, message: .forward(layer: 0, training: false, batches: [rows(4), rows(2, expert: 1)], replyDType: .bf16))),
            WireCodec.encode(Envelope(requestID: 2, message: .heartbeat(sequence: 3, sentUnixNanos: 4))),
            WireCodec.encode(Envelope(requestID: 3, message: .exportRequest(keys: [keys[0]]))),
            WireCodec.encode(Envelope(requestID: 4, message: .gradNormRequest)),
        ].map { f in f.withUnsafeBytes { Array($0) } }
        var rng = RandomGenerator(seed: 0xF022)
        let start = Date()
        for i in 0..<3000 {
            var frame: [UInt8]
            if i % 3 == 0 {
                frame = (0..<(1 + rng.nextInt(below: 200))).map { _ in UInt8(truncatingIfNeeded: rng.nextInt(below: 256)) }
            } else {
                frame = seeds[rng.nextInt(below: seeds.count)]
                for _ in 0..<(1 + rng.nextInt(below: 4)) {
                    let at = rng.nextInt(below: frame.count)
                    switch rng.nextInt(below: 3) {
                    case 0: frame[at] = UInt8(truncatingIfNeeded: rng.nextInt(below: 256))
                    case 1: frame = Array(frame.prefix(at))
                    default: frame.insert(0xFF, at: at)
                    }
                    if frame.isEmpty { frame = [0] }
                }
            }
            _ = try w.send(frame)
            answered += 1
        }
        XCTAssertEqual(answered, 3000 + absurd.count * 8)
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        guard case .expertStates(let after) = try w.request(.exportRequest(keys: [])).message else { return XCTFail("export after fuzz") }
        assertSameState(after, before, "experts after the fuzz")
        let rssEnd = w.residentBytes()
        XCTAssertGreaterThan(rssStart, 0)
        XCTAssertLessThan(rssEnd, rssStart + (64 << 20), "worker RSS grew from \(rssStart) to \(rssEnd) bytes")
        XCTAssertEqual(waitpid(w.pid, nil, WNOHANG), 0, "the worker must still be running")
    }

    /// Endpoints libzmq would accept but that can never work are refused with the reason.
    func testEndpointsAreValidated() {
        for good in ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:65535", "ipc:///tmp/x.sock", "tcp://10.0.0.1:80"] {
            XCTAssertNoThrow(try Endpoint.validate(good), good)
        }
        XCTAssertNoThrow(try Endpoint.validate("tcp://127.0.0.1:*", binding: true))
        for (bad, why) in [("tcp://256.1.1.1:99999", "99999"), ("tcp://256.1.1.1:80", "IPv4"), ("tcp://1.2.3:80", "IPv4"),
                           ("tcp://host", "no port"), ("tcp://:80", "host is empty"), ("udp://1.2.3.4:5", "tcp://HOST:PORT"),
                           ("ipc://", "empty"), ("tcp://127.0.0.1:*", "only for binding"), ("tcp://h:0", "1…65535")] {
            XCTAssertThrowsError(try Endpoint.validate(bad), bad) { e in
                XCTAssertTrue("\(e)".contains(why) && "\(e)".contains(bad), "\(bad): \(e)")
            }
        }
    }
}
