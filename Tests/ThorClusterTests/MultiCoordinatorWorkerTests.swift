import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Data-parallel coordinators, step 3 (docs/data-parallel.md): a worker keeps a link to every
/// coordinator (`thor worker --connect LEADER --coordinator FOLLOWER`), registers and beats on each,
/// answers each request over the link it came from, and refuses a follower's leader-only requests
/// (`NOT_LEADER`) without changing anything.
final class MultiCoordinatorWorkerTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 16, hiddenDim: 32, activation: .gelu, seed: 5)
    let keys = (0..<2).map { ExpertKey(layer: 0, expert: $0) }

    func batches(_ seed: UInt64, rows: Int = 5) -> [ExpertBatch] {
        var rng = RandomGenerator(seed: seed)
        return (0..<2).map { e in
            let t = Tensor(shape: [rows + e, spec.modelDim])
            rng.fillNormal(t.pointer, count: t.count, std: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
    }

    /// The leader-only requests a follower might send.
    var leaderOnly: [WireMessage] {
        [.assign(Assignment(spec: spec, keys: keys)), .importRequest([:]), .step(learningRate: 1, clipScale: 1, step: 1),
         .zeroGradients, .gradNormRequest, .gradientsRequest(keys: []), .applyGradients([:]), .shutdown(reason: "follower")]
    }

    /// In process: over link 1 every leader-only message gets `NOT_LEADER` and changes nothing; Forward,
    /// Backward, Export and Heartbeat are served; over link 0 the same Step is applied.
    func testFollowerLinkIsRefusedLeaderOnlyRequests() throws {
        let w = ExpertWorker(options: WorkerOptions(endpoint: "tcp://127.0.0.1:1", workerID: "w"))
        func send(_ m: WireMessage, link: Int, shard: Shard? = nil, id: UInt64) throws -> Envelope {
            let frame = WireCodec.encode(Envelope(requestID: id, sender: "coordinator", session: 10 + UInt64(link), message: m, shard: shard))
            let (out, exit) = w.handle(frame.zmqFrames(), link: link)
            XCTAssertNil(exit, "\(m.name) over link \(link) must not stop the worker")
            let reply = try XCTUnwrap(out)
            return try reply.withUnsafeBytes { try WireCodec.decode($0, payloads: reply.payloads) }
        }
        // A follower cannot assign either.
        guard case .error(.notLeader, _) = try send(.assign(Assignment(spec: spec, keys: keys)), link: 1, id: 1).message else {
            return XCTFail("Assign over a follower link must be refused")
        }
        XCTAssertNil(w.host)
        guard case .ack = try send(.assign(Assignment(spec: spec, keys: keys)), link: 0, id: 2).message else { return XCTFail("assign") }
        let two = Shard(index: 0, count: 2), one = Shard(index: 1, count: 2)
        _ = try send(.forward(layer: 0, training: true, batches: batches(1), replyDType: nil), link: 0, shard: two, id: 3)
        guard case .forwardReply = try send(.forward(layer: 0, training: true, batches: batches(2), replyDType: nil), link: 1, shard: one, id: 3).message else {
            return XCTFail("a follower's Forward is served")
        }
        _ = try send(.backward(layer: 0, gradients: batches(3), replyDType: nil), link: 0, shard: two, id: 4)
        guard case .backwardReply = try send(.backward(layer: 0, gradients: batches(4, rows: 5), replyDType: nil), link: 1, shard: one, id: 4).message else {
            return XCTFail("a follower's Backward is served")
        }
        let before = w.host!.exportState()
        for (i, m) in leaderOnly.enumerated() {
            let r = try send(m, link: 1, id: 100 + UInt64(i))
            guard case .error(let code, let text) = r.message else { XCTFail("\(m.name) from a follower: got \(r.message.name)"); continue }
            XCTAssertEqual(code, .notLeader, "\(m.name): \(text)")
            XCTAssertTrue(text.contains(m.name) && text.contains("leader"), text)
        }
        assertSameState(before, w.host!.exportState(), "after the refused requests")
        guard case .expertStates = try send(.exportRequest(keys: []), link: 1, id: 200).message else { return XCTFail("export from a follower") }
        guard case .heartbeat = try send(.heartbeat(sequence: 1, sentUnixNanos: 0), link: 1, id: 201).message else { return XCTFail("heartbeat") }
        // The leader's Step settles both shards and applies.
        guard case .gradNormReport = try send(.gradNormRequest, link: 0, id: 300).message else { return XCTFail("leader GradNorm") }
        guard case .ack = try send(.step(learningRate: 0.01, clipScale: 1, step: 1), link: 0, id: 301).message else { return XCTFail("leader Step") }
        let after = w.host!.exportState()
        let changed = after[keys[0]]!.contains { name, t in before[keys[0]]![name].map { !t.bitwiseEqual($0) } ?? true }
        XCTAssertTrue(changed, "the leader's Step changed the weights (so the refused Step would have shown)")
    }

    /// A real worker process with two links: it registers with both coordinators, each gets its own
    /// replies, a follower's Step is refused, and the leader's Shutdown ends it (no orphan).
    func testWorkerProcessServesTwoCoordinators() throws {
        let leader = try ClusterCoordinator(bind: "tcp://127.0.0.1:*")
        let follower = try ClusterCoordinator(bind: "tcp://127.0.0.1:*")
        let pid = try LocalCluster.spawn(try LocalCluster.locateThorBinary(),
                                         ["worker", "--connect", leader.endpoint, "--coordinator", follower.endpoint,
                                          "--id", "w0", "--parent-pid", String(getpid())])
        var reaped = false
        defer { if !reaped { kill(pid, SIGKILL); _ = exitStatus(pid, within: 5) } }
        try leader.waitForWorkers(count: 1, timeout: 30)
        try follower.waitForWorkers(count: 1, timeout: 30)
        XCTAssertEqual(leader.registrations["w0"]?.incarnation, follower.registrations["w0"]?.incarnation, "one process, two links")
        guard case .ack = try leader.exchange([(worker: "w0", message: .assign(Assignment(spec: spec, keys: keys)))],
                                              operation: "Assign", timeout: 30)[0] else { return XCTFail("assign") }
        leader.shard = Shard(index: 0, count: 2)
        follower.shard = Shard(index: 1, count: 2)
        let f0 = try leader.exchange([(worker: "w0", message: .forward(layer: 0, training: true, batches: batches(1), replyDType: nil))],
                                     operation: "Forward", timeout: 30)[0]
        let f1 = try follower.exchange([(worker: "w0", message: .forward(layer: 0, training: true, batches: batches(2, rows: 7), replyDType: nil))],
                                       operation: "Forward", timeout: 30)[0]
        guard case .forwardReply(_, let o0) = f0, case .forwardReply(_, let o1) = f1 else { return XCTFail("forward replies") }
        XCTAssertEqual(o0.map(\.tokens.shape), [[5, 16], [6, 16]], "the leader got its own reply")
        XCTAssertEqual(o1.map(\.tokens.shape), [[7, 16], [8, 16]], "the follower got its own reply")
        let refused = try follower.exchangeTolerant([(worker: "w0", message: .step(learningRate: 1, clipScale: 1, step: 1))],
                                                    operation: "Step", timeout: 30)[0]
        guard case .error(.notLeader, let text)? = refused.message else { return XCTFail("a follower's Step: \(String(describing: refused.message))") }
        XCTAssertTrue(text.contains("Step"), text)
        let shut = try follower.exchangeTolerant([(worker: "w0", message: .shutdown(reason: "follower"))], operation: "Shutdown", timeout: 30)[0]
        guard case .error(.notLeader, _)? = shut.message else { return XCTFail("a follower's Shutdown: \(String(describing: shut.message))") }
        XCTAssertEqual(Array(try leader.heartbeat(timeout: 5).keys), ["w0"], "still serving after the refusals")
        leader.shutdownWorkers(reason: "test over")
        XCTAssertEqual(exitStatus(pid, within: 10), 0)
        reaped = true
    }
}
