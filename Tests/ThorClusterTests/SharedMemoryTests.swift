import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Protocol 5's shared-memory rings: wrap-around, bytes lent out never overwritten, malformed
/// references refused without a change, fallback to frames, bit-identical results, and nothing
/// left in /dev/shm when a cluster stops or a worker is killed.
final class SharedMemoryTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 8, hiddenDim: 12, activation: .gelu, seed: 77)

    override func tearDown() {
        SharedRegion.directory = "/dev/shm"
        super.tearDown()
    }

    /// Region files of these processes still in /dev/shm (`thor-PID-…`).
    func leftovers(_ pids: [pid_t]) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []
        return names.filter { n in pids.contains { n.hasPrefix("thor-\($0)-") } }
    }

    func randomTensor(_ rows: Int, _ cols: Int, _ rng: inout RandomGenerator) -> Tensor {
        let t = Tensor(shape: [rows, cols])
        rng.fillUniform(t.pointer, count: t.count, limit: 1)
        return t
    }

    func forward(_ t: Tensor) -> Envelope {
        Envelope(requestID: 1, sender: "coordinator", message: .forward(layer: 0, training: true, batches: [ExpertBatch(expert: 0, tokens: t)], replyDType: nil))
    }

    func tokens(_ e: Envelope) -> Tensor? {
        if case .forward(_, _, let b, _) = e.message { return b.first?.tokens }
        return nil
    }

    /// Encodes through `writer` and decodes through `reader` as the peer would (frames copied).
    func roundTrip(_ e: Envelope, _ writer: SharedTensorWriter?, _ reader: SharedTensorReader?) throws -> (Envelope, framesUsed: Int) {
        let f = WireCodec.encode(e, shared: writer)
        let copies = f.payloads.map { p -> WirePayload in
            let m = MallocedBytes(count: p.bytes.count)
            if p.bytes.count > 0 { memcpy(m.pointer, p.bytes.baseAddress!, p.bytes.count) }
            return WirePayload(bytes: UnsafeRawBufferPointer(start: m.pointer, count: m.count), owner: m)
        }
        let d = try f.withUnsafeBytes { try WireCodec.decode($0, payloads: copies, shared: reader) }
        return (d, f.payloads.count)
    }

    /// Many messages through a 64 KiB ring: it wraps several times, every tensor arrives intact
    /// and in place; bytes still lent out (a worker's kept activations) are never written over —
    /// the writer sends frames instead — and are reused once released.
    func testRingWrapsAndNeverOverwritesBytesStillInUse() throws {
        let region = try SharedRegion.create(ringBytes: 1 << 16)
        region.unlink()
        XCTAssertEqual(leftovers([getpid()]), [])
        let writer = region.writer(ring: 0), reader = region.reader(ring: 0)
        var rng = RandomGenerator(seed: 5)
        for i in 0..<40 {
            let t = randomTensor(37 + i % 5, 64, &rng)  // 9.5–10.5 KiB: positions fall everywhere in the ring
            let (d, frames) = try roundTrip(forward(t), writer, reader)
            XCTAssertEqual(frames, 0, "message \(i) went through the ring")
            XCTAssertTrue(try XCTUnwrap(tokens(d)).bitwiseEqual(t), "message \(i)")
        }
        XCTAssertGreaterThan(writer.placedBytes, 5 * region.ringBytes, "the ring wrapped several times")
        XCTAssertEqual(reader.lentCount, 0)

        // A step's activations kept by the reader: 5 × 10 KiB of the 64 KiB ring.
        let sent = (0..<5).map { _ in randomTensor(40, 64, &rng) }
        let kept = try sent.map { try XCTUnwrap(tokens(try roundTrip(forward($0), writer, reader).0)) }
        XCTAssertEqual(reader.lentCount, 5)
        // More traffic than the free space: it goes as frames, the kept bytes stay as they were.
        for i in 0..<6 {
            let t = randomTensor(40, 64, &rng)
            let (d, _) = try roundTrip(forward(t), writer, reader)
            XCTAssertTrue(try XCTUnwrap(tokens(d)).bitwiseEqual(t), "message \(i) while the ring is held")
        }
        XCTAssertGreaterThan(writer.fullFallbacks, 0, "a full ring falls back to frames")
        for (k, s) in zip(kept, sent) { XCTAssertTrue(k.bitwiseEqual(s), "kept bytes were written over") }
    }

    /// Released bytes are reused: after the holders are gone the ring serves again.
    func testReleasedBytesAreReused() throws {
        let region = try SharedRegion.create(ringBytes: 1 << 16)
        region.unlink()
        let writer = region.writer(ring: 0), reader = region.reader(ring: 0)
        var rng = RandomGenerator(seed: 6)
        do {
            let kept = try (0..<6).map { _ in try XCTUnwrap(tokens(try roundTrip(forward(randomTensor(40, 64, &rng)), writer, reader).0)) }
            XCTAssertEqual(reader.lentCount, 6)
            XCTAssertEqual(try roundTrip(forward(randomTensor(40, 64, &rng)), writer, reader).framesUsed, 1, "full while held")
            XCTAssertEqual(kept.count, 6)
        }
        XCTAssertEqual(reader.lentCount, 0)
        XCTAssertEqual(try roundTrip(forward(randomTensor(40, 64, &rng)), writer, reader).framesUsed, 0, "reused once released")
    }

    /// Writes a reference of its choosing without writing any bytes (a broken or hostile peer).
    final class ForgingWriter: SharedTensorWriter {
        var ring: UInt32, position: UInt64
        init(ring: UInt32, position: UInt64) { self.ring = ring; self.position = position }
        func place(_ bytes: UnsafeRawBufferPointer) -> (ring: UInt32, position: UInt64)? { (ring, position) }
    }

    /// Wrong ring, misaligned, past the ring's end, stale (already released), ahead of the writer,
    /// and a ring reference on a link without a region: each refused as BAD_TENSOR saying why,
    /// with the reader's state unchanged.
    func testMalformedReferencesAreRefusedAndChangeNothing() throws {
        let region = try SharedRegion.create(ringBytes: 1 << 16)
        region.unlink()
        let writer = region.writer(ring: 0), reader = region.reader(ring: 0)
        var rng = RandomGenerator(seed: 7)
        // Move the released position forward: 3 messages of 10 KiB.
        for _ in 0..<3 { _ = try roundTrip(forward(randomTensor(40, 64, &rng)), writer, reader) }
        let released = reader.releasedPosition
        XCTAssertEqual(released, 3 * 10240)
        let t = randomTensor(40, 64, &rng)  // 10240 bytes
        let cases: [(UInt32, UInt64, String)] = [
            (2, released, "reads ring 1 only"),
            (1, released + 32, "not a multiple of 64"),
            (1, 65536 - 64, "runs past the end"),
            (1, 0, "stale"),
            (1, released + 65536, "ahead of anything the writer can have written"),
        ]
        for (ring, position, expected) in cases {
            XCTAssertThrowsError(try roundTrip(forward(t), ForgingWriter(ring: ring, position: position), reader), expected) { e in
                guard let w = e as? WireError, case .badTensor(let m) = w else { return XCTFail("\(e)") }
                XCTAssertTrue(m.contains(expected), m)
                XCTAssertEqual(w.code, .badTensor)
            }
            XCTAssertEqual(reader.releasedPosition, released, "\(expected): nothing released")
            XCTAssertEqual(reader.lentCount, 0, "\(expected): nothing lent")
        }
        XCTAssertThrowsError(try roundTrip(forward(t), ForgingWriter(ring: 1, position: released), nil)) { e in
            XCTAssertTrue("\(e)".contains("no shared region"), "\(e)")
        }
        // A valid message still goes through after the refusals.
        let (d, frames) = try roundTrip(forward(t), writer, reader)
        XCTAssertEqual(frames, 0)
        XCTAssertTrue(try XCTUnwrap(tokens(d)).bitwiseEqual(t))
    }

    /// A worker (no region: not started by `run`) answers a request with ring references with
    /// BAD_TENSOR and its experts are unchanged.
    func testWorkerRefusesRingReferencesItCannotResolve() throws {
        let keys = [ExpertKey(layer: 0, expert: 0)]
        let w = ExpertWorker(options: WorkerOptions(endpoint: "tcp://127.0.0.1:1", workerID: "w"))
        func send(_ m: WireMessage, _ writer: SharedTensorWriter? = nil) throws -> Envelope {
            let f = WireCodec.encode(Envelope(requestID: 3, sender: "coordinator", session: 9, message: m), shared: writer)
            let (out, _) = w.handle(f.zmqFrames())
            let r = try XCTUnwrap(out)
            return try r.withUnsafeBytes { try WireCodec.decode($0, payloads: r.payloads) }
        }
        guard case .ack = try send(.assign(Assignment(spec: spec, keys: keys))).message else { return XCTFail("assign") }
        var rng = RandomGenerator(seed: 8)
        let before = try XCTUnwrap(w.host).exportState()
        let m = WireMessage.forward(layer: 0, training: true, batches: [ExpertBatch(expert: 0, tokens: randomTensor(3, 8, &rng))], replyDType: nil)
        guard case .error(let code, let message) = try send(m, ForgingWriter(ring: 1, position: 0)).message else { return XCTFail("not refused") }
        XCTAssertEqual(code, .badTensor)
        XCTAssertTrue(message.contains("shared ring 1"), message)
        assertSameState(try XCTUnwrap(w.host).exportState(), before, "refused request changed the experts")
        let g = WireMessage.backward(layer: 0, gradients: [ExpertBatch(expert: 0, tokens: randomTensor(3, 8, &rng))], replyDType: nil)
        guard case .error(.noPendingForward, _) = try send(g).message else { return XCTFail("the refused forward kept activations") }
    }

    /// posix_fallocate failing (here: RLIMIT_FSIZE below the region's size, as a too small
    /// /dev/shm would) and a missing directory are errors, and leave no file behind.
    func testRegionThatCannotBeCreatedIsAnErrorAndLeavesNoFile() throws {
        let fsize = __rlimit_resource_t(RLIMIT_FSIZE.rawValue)
        var old = rlimit()
        getrlimit(fsize, &old)
        let oldHandler = signal(SIGXFSZ, SIG_IGN)
        var small = old
        small.rlim_cur = 1 << 20
        setrlimit(fsize, &small)
        XCTAssertThrowsError(try SharedRegion.create(ringBytes: 1 << 20)) { e in
            XCTAssertTrue("\(e)".contains("posix_fallocate"), "\(e)")
        }
        setrlimit(fsize, &old)
        signal(SIGXFSZ, oldHandler)
        XCTAssertEqual(leftovers([getpid()]), [])
        SharedRegion.directory = "/nonexistent-thor-shm"
        XCTAssertThrowsError(try SharedRegion.create()) { e in XCTAssertTrue("\(e)".contains("cannot create"), "\(e)") }
        SharedRegion.directory = "/dev/shm"
        // A coordinator given a name that is not a region's, or a token that is not the file's, declines.
        let region = try SharedRegion.create(ringBytes: 1 << 16)
        defer { region.unlink() }
        XCTAssertThrowsError(try SharedRegion.open(SharedRegionOffer(name: "../etc/passwd", token: 1, ringBytes: 1 << 16)))
        XCTAssertThrowsError(try SharedRegion.open(SharedRegionOffer(name: region.name, token: region.token ^ 2, ringBytes: 1 << 16))) { e in
            XCTAssertTrue("\(e)".contains("token"), "\(e)")
        }
        XCTAssertEqual(leftovers([getpid()]).count, 1, "a declined offer leaves the worker's file to the worker")
        _ = try SharedRegion.open(region.offer)
        XCTAssertEqual(leftovers([getpid()]), [], "opened: unlinked by the coordinator")
    }

    // MARK: - Coordinator and workers in this process (worker threads)

    /// A coordinator and `count` workers running `ExpertWorker.run` on threads of this process.
    func withThreadCluster(count: Int = 2, coordinatorShared: Bool = true, _ body: (ClusterCoordinator, [String]) throws -> Void) throws {
        let dir = NSTemporaryDirectory() + "thor-shm-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let coordinator = try ClusterCoordinator(bind: "ipc://\(dir)/c.sock")
        coordinator.sharedLinks.enabled = coordinatorShared
        let ids = (0..<count).map { "t\($0)" }
        let done = DispatchGroup()
        for id in ids {
            var o = WorkerOptions(endpoint: coordinator.endpoint, workerID: id)
            o.orphanTimeout = 10
            let w = ExpertWorker(options: o)
            done.enter()
            Thread { _ = try? w.run(); done.leave() }.start()
        }
        defer {
            coordinator.shutdownWorkers(reason: "test over")
            XCTAssertEqual(done.wait(timeout: .now() + 20), .success, "worker threads ended")
        }
        try coordinator.waitForWorkers(count: count, timeout: 30)
        try body(coordinator, ids)
    }

    /// Three training steps (forward, backward, norms, Adam) of 2 layers: remote equals in process bit for bit.
    func runSteps(_ coordinator: ClusterCoordinator, _ workers: [String], _ what: String) throws {
        let keys = Placement.allKeys(layers: 2, experts: 4)
        let remote = try RemoteExpertBackend(coordinator: coordinator, spec: spec,
                                             placement: try Placement(keys: keys, workers: workers, strategy: .roundRobin))
        let local = InProcessExpertBackend(spec: spec, keys: keys)
        var rng = RandomGenerator(seed: 11)
        for step in 1...3 {
            let inputs = (0..<2).map { _ in randomBatches(experts: 4, modelDim: 8, rng: &rng) }
            for l in 0..<2 {
                assertBitwiseEqual(try remote.forward(layer: l, batches: inputs[l], training: true),
                                   try local.forward(layer: l, batches: inputs[l], training: true), "\(what) step \(step) forward \(l)")
            }
            for l in (0..<2).reversed() {
                let g = inputs[l].map { ExpertBatch(expert: $0.expert, tokens: randomTensor($0.tokens.shape[0], 8, &rng)) }
                assertBitwiseEqual(try remote.backward(layer: l, gradients: g), try local.backward(layer: l, gradients: g),
                                   "\(what) step \(step) backward \(l)")
            }
            let nr = try remote.squaredGradientNorms(), nl = try local.squaredGradientNorms()
            for k in nl.keys { XCTAssertEqual(nr[k]?.bitPattern, nl[k]?.bitPattern, "\(what) step \(step) norm \(k)") }
            try remote.step(learningRate: 1e-2, clipScale: 1, step: step)
            try local.step(learningRate: 1e-2, clipScale: 1, step: step)
        }
        assertSameState(try remote.exportState(), try local.exportState(), "\(what): final state")
    }

    func testSharedMemoryOnGivesInProcessBitsAndLeavesNothing() throws {
        try withThreadCluster { c, ids in
            XCTAssertEqual(c.sharedLinks.count, 2, "\(c.sharedLinks.declined)")
            try runSteps(c, ids, "shared memory")
            XCTAssertTrue(c.sharedLinks.used)
            XCTAssertGreaterThan(c.sharedLinks.bytesRead, 0, "replies came through the reply rings")
            XCTAssertEqual(leftovers([getpid()]), [], "both sides mapped: the files are gone")
        }
        XCTAssertEqual(leftovers([getpid()]), [])
    }

    func testSwitchedOffOnTheCoordinatorUsesFramesAndLeavesNothing() throws {
        try withThreadCluster(coordinatorShared: false) { c, ids in
            try runSteps(c, ids, "shared memory off")
            XCTAssertEqual(c.sharedLinks.count, 0)
            XCTAssertFalse(c.sharedLinks.used)
            XCTAssertEqual(leftovers([getpid()]), [], "declined offers: the workers removed their files")
        }
    }

    func testWorkersWithoutARegionUseFrames() throws {
        SharedRegion.directory = "/nonexistent-thor-shm"  // the workers cannot create theirs
        try withThreadCluster { c, ids in
            try runSteps(c, ids, "no region")
            XCTAssertEqual(c.sharedLinks.count, 0)
            XCTAssertFalse(c.sharedLinks.used)
        }
    }

    // MARK: - Real worker processes

    /// `thor worker --no-shared-memory`: frames, the same bits.
    func testWorkerSwitchedOffUsesFrames() throws {
        let cluster = try LocalCluster(workers: 2, transport: .ipc, extraArguments: ["--no-shared-memory"])
        defer { cluster.shutdown() }
        try runSteps(cluster.coordinator, cluster.workerIDs, "--no-shared-memory")
        XCTAssertEqual(cluster.coordinator.sharedLinks.count, 0)
        XCTAssertFalse(cluster.coordinator.sharedLinks.used)
    }

    /// kill -9 of a worker between a training forward (its ring holds the step's activations) and
    /// the backward: its replica finishes the step bit for bit, the coordinator drops its link, and
    /// no region file is left in /dev/shm, then or after the cluster stops.
    func testWorkerKilledMidStepLeavesNoRegionAndStaysBitIdentical() throws {
        let keys = Placement.allKeys(layers: 2, experts: 4)
        let cluster = try LocalCluster(workers: 3, transport: .ipc)
        var pids: [pid_t] = []
        do {
            defer { cluster.shutdown() }
            pids = cluster.workerIDs.map { cluster.processID(of: $0) }
            XCTAssertEqual(cluster.coordinator.sharedLinks.count, 3, "\(cluster.coordinator.sharedLinks.declined)")
            let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: spec,
                                                 placement: try Placement(keys: keys, workers: cluster.workerIDs, strategy: .roundRobin, replicas: 2))
            remote.replication = .active
            let local = InProcessExpertBackend(spec: spec, keys: keys)
            var killed = false
            cluster.coordinator.faultHook = { p in
                if p.step == 2, p.phase == .backward, p.worker == "w1", !killed {
                    killed = true
                    kill(cluster.processID(of: "w1"), SIGKILL)
                }
                return .none
            }
            var rng = RandomGenerator(seed: 12)
            for step in 1...3 {
                let inputs = (0..<2).map { _ in randomBatches(experts: 4, modelDim: 8, rng: &rng) }
                for l in 0..<2 {
                    assertBitwiseEqual(try remote.forward(layer: l, batches: inputs[l], training: true),
                                       try local.forward(layer: l, batches: inputs[l], training: true), "step \(step) forward \(l)")
                }
                for l in (0..<2).reversed() {
                    let g = inputs[l].map { ExpertBatch(expert: $0.expert, tokens: randomTensor($0.tokens.shape[0], 8, &rng)) }
                    assertBitwiseEqual(try remote.backward(layer: l, gradients: g), try local.backward(layer: l, gradients: g),
                                       "step \(step) backward \(l)")
                }
                let nl = try local.squaredGradientNorms()
                let clip = Adam.clipScale(squaredNorm: nl.keys.sorted().reduce(0.0) { $0 + nl[$1]! }, maxNorm: 0.5)
                _ = try remote.squaredGradientNorms()
                try remote.step(learningRate: 1e-2, clipScale: clip, step: step)
                try local.step(learningRate: 1e-2, clipScale: clip, step: step)
            }
            XCTAssertTrue(killed)
            XCTAssertFalse(remote.placement.workers.contains("w1"))
            XCTAssertEqual(cluster.coordinator.sharedLinks.count, 2, "the dead worker's link is dropped")
            XCTAssertTrue(cluster.coordinator.sharedLinks.used)
            assertSameState(try remote.exportState(), try local.exportState(), "after the kill: final state")
            XCTAssertEqual(leftovers(pids), [], "killed mid-step: no region file left")
        }
        XCTAssertEqual(leftovers(pids), [], "after the cluster stopped")
    }
}
