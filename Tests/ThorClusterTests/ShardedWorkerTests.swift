import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Protocol 4 (docs/data-parallel.md, step 2): Forward and Backward carry their micro-batch shard,
/// a worker keeps activations and expert gradients per shard and sums the shards in shard order,
/// so the order the shards' requests arrive in cannot change a bit; bad shard frames are refused
/// and change nothing.
final class ShardedWorkerTests: XCTestCase {
    struct Unexpected: Error { let what: String }

    let spec = ExpertSpec(modelDim: 16, hiddenDim: 48, activation: .gelu, seed: 3)
    let keys = (0..<2).flatMap { l in (0..<3).map { ExpertKey(layer: l, expert: $0) } }

    enum Pass: Equatable { case forward, backward }
    struct Request: Equatable { let pass: Pass; let shard: Int; let layer: Int }
    func f(_ s: Int, _ l: Int) -> Request { Request(pass: .forward, shard: s, layer: l) }
    func b(_ s: Int, _ l: Int) -> Request { Request(pass: .backward, shard: s, layer: l) }

    /// Shard `s`'s batches of MoE layer `l`: each shard routes rows to its own subset of the
    /// experts (expert 2 gets none in shard 1), hundreds of rows so the weight-gradient GEMMs and
    /// bias sums reduce over more than one 256-row chunk (a different order of adding shards shows).
    func batches(_ s: Int, _ l: Int, gradient: Bool = false) -> [ExpertBatch] {
        let rows: [[Int]] = [[700, 300, 260], [420, 650], [310, 290, 530]]
        var rng = RandomGenerator(seed: UInt64(100 * s + 10 * l + (gradient ? 1 : 0)))
        return rows[s % 3].enumerated().map { e, n in
            let t = Tensor(shape: [n, spec.modelDim])
            rng.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
    }

    func newWorker() throws -> ExpertWorker {
        let w = ExpertWorker(options: WorkerOptions(endpoint: "tcp://127.0.0.1:1", workerID: "w"))
        guard case .ack = try send(w, .assign(Assignment(spec: spec, keys: keys))).message else { throw Unexpected(what: "assign failed") }
        return w
    }

    /// One request handled by `worker` in this process; the decoded reply.
    func send(_ worker: ExpertWorker, _ message: WireMessage, shard: Shard? = nil, id: UInt64 = 7, version: UInt32 = thorProtocolVersion) throws -> Envelope {
        let frame = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: 9, message: message, version: version, shard: shard))
        let (out, exit) = worker.handle(frame.zmqFrames())
        XCTAssertNil(exit)
        let reply = try XCTUnwrap(out)
        return try reply.withUnsafeBytes { try WireCodec.decode($0, payloads: reply.payloads) }
    }

    func tensors(_ e: Envelope) -> [Tensor] {
        switch e.message {
        case .forwardReply(_, let o), .backwardReply(_, let o): return o.map(\.tokens)
        default: XCTFail("expected a forward or backward reply, got \(e.message.name)"); return []
        }
    }

    /// Runs `order` (every shard's forward and backward of every layer) on a fresh worker, then the
    /// gradient norm, the gradients and a step. Returns every reply's tensors by request, the norms,
    /// the summed gradients and the experts' state after the step.
    func run(_ order: [Request], count: Int) throws
        -> (replies: [String: [Tensor]], norms: [ExpertKey: Double], gradients: [ExpertKey: [String: Tensor]], state: [ExpertKey: [String: Tensor]]) {
        let w = try newWorker()
        var replies: [String: [Tensor]] = [:]
        for r in order {
            let shard = Shard(index: r.shard, count: count)
            let m: WireMessage = r.pass == .forward
                ? .forward(layer: r.layer, training: true, batches: batches(r.shard, r.layer), replyDType: nil)
                : .backward(layer: r.layer, gradients: batches(r.shard, r.layer, gradient: true), replyDType: nil)
            replies["\(r)"] = tensors(try send(w, m, shard: shard))
        }
        guard case .gradNormReport(let norms) = try send(w, .gradNormRequest).message else { throw Unexpected(what: "norms") }
        guard case .expertStates(let grads) = try send(w, .gradientsRequest(keys: [])).message else { throw Unexpected(what: "gradients") }
        guard case .ack = try send(w, .step(learningRate: 1e-2, clipScale: 0.5, step: 1)).message else { throw Unexpected(what: "step") }
        guard case .expertStates(let state) = try send(w, .exportRequest(keys: [])).message else { throw Unexpected(what: "export") }
        return (replies, norms, grads, state)
    }

    func assertSameBits(_ a: (replies: [String: [Tensor]], norms: [ExpertKey: Double], gradients: [ExpertKey: [String: Tensor]], state: [ExpertKey: [String: Tensor]]),
                        _ b: (replies: [String: [Tensor]], norms: [ExpertKey: Double], gradients: [ExpertKey: [String: Tensor]], state: [ExpertKey: [String: Tensor]]),
                        _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(Set(a.replies.keys), Set(b.replies.keys), what, file: file, line: line)
        for (k, t) in a.replies { assertBitwiseEqual(t, b.replies[k] ?? [], "\(what): reply to \(k)", file: file, line: line) }
        XCTAssertEqual(a.norms, b.norms, "\(what): gradient norms", file: file, line: line)
        for (k, s) in a.gradients { for (n, t) in s { XCTAssertTrue(t.bitwiseEqual(b.gradients[k]![n]!), "\(what): gradient \(n)", file: file, line: line) } }
        for (k, s) in a.state { for (n, t) in s { XCTAssertTrue(t.bitwiseEqual(b.state[k]![n]!), "\(what): \(n) after the step", file: file, line: line) } }
    }

    /// In shard order, each shard's passes one after the other (what one coordinator sends).
    func inOrder(_ count: Int) -> [Request] {
        (0..<count).flatMap { s in [f(s, 0), f(s, 1), b(s, 1), b(s, 0)] }
    }

    /// C = 2: forward s1, forward s0, backward s0, backward s1 (per layer, interleaved) gives exactly
    /// the bits of the in-order run: every reply, the norms, the summed gradients, the step.
    func testTwoShardsInPermutedOrderGiveTheInOrderBits() throws {
        let reference = try run(inOrder(2), count: 2)
        let permuted = try run([f(1, 0), f(0, 0), f(1, 1), f(0, 1), b(0, 1), b(1, 1), b(0, 0), b(1, 0)], count: 2)
        assertSameBits(reference, permuted, "C = 2 permuted")
    }

    /// C = 3, shard 2 first: the shards' gradients are still summed as (g_0 + g_1) + g_2, which is
    /// not the arrival order's (g_2 + g_0) + g_1 (checked to differ, so the test can fail).
    func testThreeShardsInAnyOrderGiveTheInOrderBits() throws {
        let reference = try run(inOrder(3), count: 3)
        let orders: [[Request]] = [
            [f(2, 0), f(2, 1), b(2, 1), b(2, 0), f(0, 0), f(0, 1), b(0, 1), b(0, 0), f(1, 0), f(1, 1), b(1, 1), b(1, 0)],
            [f(1, 0), f(2, 0), f(0, 0), f(2, 1), f(0, 1), f(1, 1), b(0, 1), b(2, 1), b(1, 1), b(1, 0), b(2, 0), b(0, 0)],
        ]
        for (i, order) in orders.enumerated() { assertSameBits(reference, try run(order, count: 3), "C = 3 order \(i)") }

        // The same calls summed in arrival order (every call as a whole batch, the step-1 host) differ.
        let host = ExpertHost(spec: spec, keys: keys, threads: 2)
        for s in [2, 0, 1] {
            for l in 0..<2 {
                _ = try host.forward(layer: l, batches: batches(s, l), training: true)
                _ = try host.backward(layer: l, gradients: batches(s, l, gradient: true))
            }
        }
        var differs = false
        for k in keys { for p in host.experts[k]!.parameters where !p.grad.bitwiseEqual(reference.gradients[k]![p.name]!) { differs = true } }
        XCTAssertTrue(differs, "summing in arrival order should change some gradient bit (else this test could not fail)")
    }

    /// The worker equals the in-process host given the shards in order (the micro-batch reference).
    func testWorkerEqualsTheInProcessHost() throws {
        let reference = try run(inOrder(3), count: 3)
        let host = InProcessExpertBackend(spec: spec, keys: keys, threads: 1)
        for s in 0..<3 {
            host.shard = Shard(index: s, count: 3)
            for l in 0..<2 { assertBitwiseEqual(try host.forward(layer: l, batches: batches(s, l), training: true), reference.replies["\(f(s, l))"]!, "forward") }
            for l in [1, 0] { assertBitwiseEqual(try host.backward(layer: l, gradients: batches(s, l, gradient: true)), reference.replies["\(b(s, l))"]!, "backward") }
        }
        XCTAssertEqual(try host.squaredGradientNorms(), reference.norms)
        try host.step(learningRate: 1e-2, clipScale: 0.5, step: 1)
        for (k, s) in try host.exportState() { for (n, t) in s { XCTAssertTrue(t.bitwiseEqual(reference.state[k]![n]!), n) } }
    }

    func expectError(_ e: Envelope, _ code: WireErrorCode, _ needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard case .error(let got, let message) = e.message else {
            return XCTFail("expected an Error reply, got \(e.message.name)", file: file, line: line)
        }
        XCTAssertEqual(got, code, message, file: file, line: line)
        for n in needles { XCTAssertTrue(message.contains(n), "'\(message)' should mention '\(n)'", file: file, line: line) }
    }

    /// Out-of-range shards, a shard on a message that takes none, another shard count within a step,
    /// a backward of a shard without its forward, and a norm or step while a shard's backward is
    /// missing: each gets a clear error and changes nothing (the run then completes with the bits
    /// of an undisturbed run). A version-3 peer is refused.
    func testBadShardRequestsAreRefusedAndChangeNothing() throws {
        let reference = try run(inOrder(2), count: 2)
        let w = try newWorker()
        let x00 = WireMessage.forward(layer: 0, training: true, batches: batches(0, 0), replyDType: nil)
        let g10 = WireMessage.backward(layer: 0, gradients: batches(1, 0, gradient: true), replyDType: nil)
        expectError(try send(w, x00, shard: Shard(index: 2, count: 2)), .badShard, ["shard 2 of 2", "out of range"])
        expectError(try send(w, x00, shard: Shard(index: 0, count: 0)), .badShard, ["shard 0 of 0"])
        expectError(try send(w, .gradNormRequest, shard: Shard(index: 0, count: 2)), .badShard, ["GradNormRequest", "only Forward and Backward"])
        expectError(try send(w, .step(learningRate: 1e-2, clipScale: 0.5, step: 1), shard: Shard(index: 1, count: 2)), .badShard, ["Step"])
        expectError(try send(w, x00, version: 3), .versionMismatch, ["version 3", "version 5"])
        expectError(try send(w, x00, version: 4), .versionMismatch, ["version 4", "version 5"])  // protocol 5: shared-memory tensors

        var replies: [String: [Tensor]] = [:]
        func pass(_ r: Request) throws {
            let m: WireMessage = r.pass == .forward
                ? .forward(layer: r.layer, training: true, batches: batches(r.shard, r.layer), replyDType: nil)
                : .backward(layer: r.layer, gradients: batches(r.shard, r.layer, gradient: true), replyDType: nil)
            replies["\(r)"] = tensors(try send(w, m, shard: Shard(index: r.shard, count: 2)))
        }
        try pass(f(0, 0))
        expectError(try send(w, g10, shard: Shard(index: 1, count: 2)), .noPendingForward, ["shard 1 of 2", "MoE layer 0"])
        expectError(try send(w, x00, shard: Shard(index: 0, count: 3)), .badShard, ["shard 0 of 3", "step of 2 shards"])
        try pass(f(0, 1)); try pass(b(0, 1)); try pass(b(0, 0)); try pass(f(1, 0)); try pass(f(1, 1)); try pass(b(1, 1))
        // Shard 1's backward of layer 0 is missing: no norm, gradients or step yet.
        for m in [WireMessage.gradNormRequest, .gradientsRequest(keys: []), .step(learningRate: 1e-2, clipScale: 0.5, step: 1)] {
            expectError(try send(w, m), .badShard, ["shard 1 of 2", "MoE layer 0 without its backward"])
        }
        try pass(b(1, 0))
        guard case .gradNormReport(let norms) = try send(w, .gradNormRequest).message else { return XCTFail("norms") }
        guard case .expertStates(let grads) = try send(w, .gradientsRequest(keys: [])).message else { return XCTFail("gradients") }
        guard case .ack = try send(w, .step(learningRate: 1e-2, clipScale: 0.5, step: 1)).message else { return XCTFail("step") }
        guard case .expertStates(let state) = try send(w, .exportRequest(keys: [])).message else { return XCTFail("export") }
        assertSameBits(reference, (replies, norms, grads, state), "after the refused requests")
        // After the step the count is free again, and the shard buffers stay for reuse.
        XCTAssertEqual(tensors(try send(w, x00, shard: Shard(index: 0, count: 3))).count, 3)
    }

    /// Shard buffers are allocated once per (expert, shard > 0) and reused by later steps; ZeroGradients
    /// drops a step's shard gradients (the next step equals one that never saw them).
    func testShardBuffersAreReusedAndZeroGradientsDropsThem() throws {
        let host = InProcessExpertBackend(spec: spec, keys: keys, threads: 1)
        func step(_ n: Int) throws {
            for s in 0..<2 {
                host.shard = Shard(index: s, count: 2)
                for l in 0..<2 { _ = try host.forward(layer: l, batches: batches(s, l), training: true) }
                for l in [1, 0] { _ = try host.backward(layer: l, gradients: batches(s, l, gradient: true)) }
            }
            host.shard = .whole
            try host.step(learningRate: 1e-2, clipScale: 0.5, step: n)
        }
        try step(1)
        let buffers = host.host.shardGradientBuffers
        XCTAssertEqual(buffers, 4, "one per expert with rows in shard 1 (2 in each layer)")
        try step(2)
        XCTAssertEqual(host.host.shardGradientBuffers, buffers)

        let clean = InProcessExpertBackend(spec: spec, keys: keys, threads: 1)
        try clean.importState(try host.exportState())
        // A shard-1 contribution, then dropped.
        host.shard = Shard(index: 1, count: 2)
        _ = try host.forward(layer: 0, batches: batches(1, 0), training: true)
        _ = try host.backward(layer: 0, gradients: batches(1, 0, gradient: true))
        host.shard = .whole
        try host.zeroGradients()
        for h in [host, clean] {
            h.shard = Shard(index: 0, count: 2)
            _ = try h.forward(layer: 0, batches: batches(0, 0), training: true)
            _ = try h.backward(layer: 0, gradients: batches(0, 0, gradient: true))
            h.shard = .whole
        }
        XCTAssertEqual(try host.squaredGradientNorms(), try clean.squaredGradientNorms())
    }

    /// A real worker process: its reply cache is keyed by (session, shard, request id): another
    /// shard's request with the same id is computed, not answered with the first one's reply; the
    /// same shard's resend is answered from the cache and not applied twice.
    func testReplyCacheKeepsShardsApart() throws {
        let raw = try RawCoordinator(workerID: "shards", arguments: [])
        defer {
            raw.stop()
            XCTAssertTrue(processIsGone(raw.pid), "worker outlived the test")
        }
        guard case .register = try raw.receive().message else { return XCTFail("expected Register first") }
        guard case .ack = try raw.call(.assign(Assignment(spec: spec, keys: keys))).1.message else { return XCTFail("Assign") }
        func call(_ m: WireMessage, shard: Int, id: UInt64) throws -> Envelope {
            let f = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: 5, message: m, shard: Shard(index: shard, count: 2)))
            return try raw.sendRaw(f.zmqFrames())
        }
        let reference = InProcessExpertBackend(spec: spec, keys: keys)
        var expected: [[Tensor]] = []
        for s in 0..<2 {
            reference.shard = Shard(index: s, count: 2)
            expected.append(try reference.forward(layer: 0, batches: batches(s, 0), training: true))
        }
        let y0 = tensors(try call(.forward(layer: 0, training: true, batches: batches(0, 0), replyDType: nil), shard: 0, id: 900))
        let y1 = tensors(try call(.forward(layer: 0, training: true, batches: batches(1, 0), replyDType: nil), shard: 1, id: 900))
        assertBitwiseEqual(y0, expected[0], "shard 0")
        assertBitwiseEqual(y1, expected[1], "shard 1 with shard 0's request id")
        let backward = WireMessage.backward(layer: 0, gradients: batches(1, 0, gradient: true), replyDType: nil)
        let dx = tensors(try call(backward, shard: 1, id: 901))
        assertBitwiseEqual(tensors(try call(backward, shard: 1, id: 901)), dx, "resend answered from the cache")
        expectError(try call(backward, shard: 1, id: 902), .noPendingForward, ["shard 1 of 2"])
    }

    /// The coordinator stamps its current shard on Forward and Backward only, and none for the whole batch.
    func testCoordinatorStampsTheShardOnForwardAndBackwardOnly() {
        let s = Shard(index: 1, count: 3)
        XCTAssertEqual(ClusterCoordinator.shard(of: .forward(layer: 0, training: true, batches: [], replyDType: nil), s), s)
        XCTAssertEqual(ClusterCoordinator.shard(of: .backward(layer: 0, gradients: [], replyDType: nil), s), s)
        XCTAssertNil(ClusterCoordinator.shard(of: .forward(layer: 0, training: true, batches: [], replyDType: nil), .whole))
        for m in [WireMessage.gradNormRequest, .step(learningRate: 1, clipScale: 1, step: 1), .zeroGradients, .gradientsRequest(keys: [])] {
            XCTAssertNil(ClusterCoordinator.shard(of: m, s), m.name)
        }
    }

    /// The shard travels in Envelope field 30 and comes back as sent; absent means the whole batch.
    func testShardRoundTrips() throws {
        func roundTrip(_ e: Envelope) throws -> Envelope {
            let f = WireCodec.encode(e)
            return try f.withUnsafeBytes { try WireCodec.decode($0, payloads: f.payloads) }
        }
        let m = WireMessage.backward(layer: 1, gradients: batches(0, 1), replyDType: nil)
        XCTAssertEqual(try roundTrip(Envelope(requestID: 3, message: m, shard: Shard(index: 2, count: 5))).shard, Shard(index: 2, count: 5))
        XCTAssertEqual(try roundTrip(Envelope(requestID: 3, message: m, shard: Shard(index: 0, count: 1))).shard, Shard.whole)
        XCTAssertNil(try roundTrip(Envelope(requestID: 3, message: m)).shard)
        XCTAssertEqual(thorProtocolVersion, 5)
    }
}
