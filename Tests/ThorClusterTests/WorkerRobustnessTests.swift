import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// A real worker process driven by a raw ROUTER socket playing the coordinator.
final class RawCoordinator {
    let context: ZMQContext
    let router: Socket
    let endpoint: String
    let pid: pid_t
    let workerID: String
    /// The worker's ZeroMQ routing id (`workerID#incarnation`), learned from its Register.
    var route = ""
    /// The routing ids liveness beats (request id 0) arrived from.
    var beatRoutes: Set<String> = []
    var nextID: UInt64 = 100

    init(workerID: String = "victim", arguments: [String]) throws {
        self.workerID = workerID
        context = try ZMQContext()
        router = try Socket(context: context, type: .router)
        try router.setRouterMandatory(true)
        try router.bind("tcp://127.0.0.1:*")
        endpoint = try router.lastEndpoint()
        pid = try LocalCluster.spawn(try LocalCluster.locateThorBinary(),
                                     ["worker", "--connect", endpoint, "--id", workerID, "--parent-pid", String(getpid())]
                                     + arguments)
    }

    convenience init(maxFrameBytes: Int) throws {
        try self.init(arguments: ["--max-frame-bytes", String(maxFrameBytes)])
    }

    /// Kills and reaps the worker.
    func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        router.close()
    }

    /// The next message that is not a liveness beat (request id 0).
    func receive() throws -> Envelope {
        while true {
            let frames = try XCTUnwrap(router.receive(timeout: 20), "no reply from the worker")
            XCTAssertGreaterThanOrEqual(frames.count, 2)
            XCTAssertTrue(frames[0].string.hasPrefix(workerID + "#"), frames[0].string)
            let e: Envelope
            do { e = try WireCodec.decode(frames: frames.dropFirst()) } catch {
                XCTFail("undecodable reply \(frames[1].array): \(error)"); throw error
            }
            if case .heartbeat = e.message, e.requestID == 0 {
                beatRoutes.insert(frames[0].string)
                continue
            }
            // Only beats come from the worker's beat connection (`BeatChannel`); the rest names its data route.
            XCTAssertNil(BeatChannel.dataRoute(of: frames[0].string), "\(e.message.name) on the beat connection")
            route = frames[0].string
            return e
        }
    }

    /// Resident memory of the worker process (VmRSS of /proc/PID/status), in bytes.
    func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return -1 }
        return (line.split(separator: " ").compactMap { Int($0) }.first ?? -1) * 1024
    }

    func sendRaw(_ frames: [Frame]) throws -> Envelope {
        try router.send([Frame(route)] + frames)
        return try receive()
    }

    func call(_ m: WireMessage, version: UInt32 = thorProtocolVersion) throws -> (UInt64, Envelope) {
        nextID += 1
        let f = WireCodec.encode(Envelope(requestID: nextID, sender: "test", message: m, version: version))
        return (nextID, try sendRaw(f.zmqFrames()))
    }
}

final class WorkerRobustnessTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 8, hiddenDim: 16, activation: .gelu, seed: 3)
    let keys = [ExpertKey(layer: 0, expert: 0), ExpertKey(layer: 0, expert: 1), ExpertKey(layer: 1, expert: 0)]

    func batches(seed: UInt64, rows: [Int]) -> [ExpertBatch] {
        var rng = RandomGenerator(seed: seed)
        return rows.enumerated().map { e, n in
            let t = Tensor(shape: [n, 8])
            rng.fillUniform(t.pointer, count: t.count, limit: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
    }

    func expectError(_ e: Envelope, _ code: WireErrorCode, _ needle: String, requestID: UInt64? = nil,
                     file: StaticString = #filePath, line: UInt = #line) {
        guard case .error(let got, let message) = e.message else {
            return XCTFail("expected an Error reply, got \(e.message.name)", file: file, line: line)
        }
        XCTAssertEqual(got, code, message, file: file, line: line)
        XCTAssertTrue(message.contains(needle), "'\(message)' should mention '\(needle)'", file: file, line: line)
        if let requestID { XCTAssertEqual(e.requestID, requestID, file: file, line: line) }
    }

    func testBadFramesGetNamedErrorsAndChangeNoState() throws {
        let raw = try RawCoordinator(maxFrameBytes: 16 * 1024)
        defer {
            raw.stop()
            XCTAssertTrue(processIsGone(raw.pid), "worker outlived the test")
        }
        guard case .register(let r) = try raw.receive().message else { return XCTFail("expected Register first") }
        XCTAssertEqual(r.workerID, "victim")
        XCTAssertEqual(r.pid, Int(raw.pid))
        XCTAssertEqual(raw.route, r.routingID)

        // Compute before any Assign is refused.
        expectError(try raw.call(.gradNormRequest).1, .notAssigned, "no experts assigned")
        guard case .ack = try raw.call(.assign(Assignment(spec: spec, keys: keys))).1.message else { return XCTFail("Assign") }
        let reference = InProcessExpertBackend(spec: spec, keys: keys)

        // A training forward whose backward comes after the bad frames.
        let x = batches(seed: 1, rows: [3, 5])
        guard case .forwardReply(_, let y) = try raw.call(.forward(layer: 0, training: true, batches: x, replyDType: nil)).1.message else {
            return XCTFail("forward")
        }
        assertBitwiseEqual(y.map(\.tokens), try reference.forward(layer: 0, batches: x, training: true), "forward")

        // Malformed: not protobuf.
        expectError(try raw.sendRaw([Frame([0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x01, 0x02])]), .malformed, "not a valid thor Envelope")
        // Truncated: half of a valid backward request's Envelope frame.
        let g = batches(seed: 2, rows: [3, 5])
        let full = WireCodec.encode(Envelope(requestID: 7, message: .backward(layer: 0, gradients: g, replyDType: nil)))
        expectError(try raw.sendRaw([full.withUnsafeBytes { Frame(copying: UnsafeRawBufferPointer(rebasing: $0[0..<$0.count / 2])) }]),
                    .malformed, "truncated")
        // Malformed multipart messages: a tensor frame missing, one too short, one too many.
        let header = { full.withUnsafeBytes { Frame(copying: $0) } }
        let tensorFrames = { full.payloads.map { Frame(copying: $0.bytes) } }
        expectError(try raw.sendRaw([header()] + tensorFrames().dropLast()), .badTensor, "tensor frame 1 is out of range")
        var short = tensorFrames()
        let second = full.payloads[1].bytes
        short[1] = Frame(copying: UnsafeRawBufferPointer(rebasing: second[0..<(second.count - 4)]))
        expectError(try raw.sendRaw([header()] + short), .badTensor, "tensor frame 1")
        expectError(try raw.sendRaw([header()] + tensorFrames() + [Frame("extra")]), .malformed, "tensor frame 2 of 3 is not referenced")
        // Oversized: a valid forward above the worker's 16 KiB limit.
        let (_, big) = try raw.call(.forward(layer: 0, training: true, batches: batches(seed: 3, rows: [600]), replyDType: nil))
        expectError(big, .tooLarge, "exceeds the limit of 16384 bytes")
        // Wrong protocol version: refused, but the request id is echoed.
        let (id, wrong) = try raw.call(.forward(layer: 0, training: true, batches: x, replyDType: nil), version: 99)
        expectError(wrong, .versionMismatch, "version 99", requestID: id)
        // Semantically bad requests: unknown expert, backward with the wrong rows.
        expectError(try raw.call(.forward(layer: 1, training: true, batches: batches(seed: 4, rows: [2, 2]), replyDType: nil)).1,
                    .unknownExpert, "L1E1")
        expectError(try raw.call(.backward(layer: 0, gradients: batches(seed: 5, rows: [3, 4]), replyDType: nil)).1,
                    .shapeMismatch, "layer 0")
        // Messages only a worker sends.
        expectError(try raw.call(.ack).1, .unexpectedMessage, "Ack")

        // The worker kept serving and its state is what it would be without the bad frames.
        guard case .backwardReply(_, let dx) = try raw.call(.backward(layer: 0, gradients: g, replyDType: nil)).1.message else {
            return XCTFail("backward after bad frames")
        }
        assertBitwiseEqual(dx.map(\.tokens), try reference.backward(layer: 0, gradients: g), "backward after bad frames")
        guard case .gradNormReport(let norms) = try raw.call(.gradNormRequest).1.message else { return XCTFail("norms") }
        XCTAssertEqual(norms, try reference.squaredGradientNorms())
        guard case .ack = try raw.call(.step(learningRate: 0.01, clipScale: 1, step: 1)).1.message else { return XCTFail("step") }
        try reference.step(learningRate: 0.01, clipScale: 1, step: 1)
        guard case .expertStates(let state) = try raw.call(.exportRequest(keys: [])).1.message else { return XCTFail("export") }
        assertSameState(state, try reference.exportState(), "state after bad frames")
        guard case .heartbeat(let seq, _) = try raw.call(.heartbeat(sequence: 5, sentUnixNanos: 0)).1.message else { return XCTFail("heartbeat") }
        XCTAssertEqual(seq, 5)

        // Shutdown: acknowledged, then the process exits by itself.
        guard case .ack = try raw.call(.shutdown(reason: "test over")).1.message else { return XCTFail("shutdown") }
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(10)
        while waitpid(raw.pid, &status, WNOHANG) == 0 && Date() < deadline { usleep(10_000) }
        XCTAssertTrue(processIsGone(raw.pid), "worker did not exit after Shutdown")
    }

    func testSilentWorkerTimesOutNamingItAndLateRepliesAreDropped() throws {
        let cluster = try LocalCluster(workers: 2, transport: .ipc)
        let pids = cluster.processIDs
        defer {
            for p in pids { kill(p, SIGCONT) }
            cluster.shutdown()
            for p in pids { XCTAssertTrue(processIsGone(p)) }
        }
        let allKeys = Placement.allKeys(layers: 1, experts: 4)
        let placement = try Placement(keys: allKeys, workers: cluster.workerIDs, strategy: .roundRobin)
        let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: spec, placement: placement)
        let reference = InProcessExpertBackend(spec: spec, keys: allKeys)
        let x = batches(seed: 9, rows: [2, 3, 1, 4])
        // A deadline shorter than the liveness window: the exchange names the silent worker.
        kill(pids[1], SIGSTOP)
        let request = [(worker: "w1", message: WireMessage.forward(layer: 0, training: false,
                                                                   batches: [x[1], x[3]], replyDType: nil))]
        XCTAssertThrowsError(try cluster.coordinator.exchange(request, operation: "Forward layer 0", timeout: 0.5)) { e in
            XCTAssertEqual(e as? ClusterError, .timeout(operation: "Forward layer 0", workers: ["w1"], seconds: 0.5))
            XCTAssertTrue("\(e)".contains("w1"), "\(e)")
        }
        // Without replicas the backend then reports w1's experts as lost, by name; nothing continues without them.
        XCTAssertThrowsError(try remote.forward(layer: 0, batches: x, training: false)) { e in
            guard case .expertsLost(let keys, let workers, _)? = e as? ClusterError else { return XCTFail("\(e)") }
            XCTAssertEqual(keys, placement.keys(on: "w1"))
            XCTAssertEqual(workers, ["w1"])
        }
        kill(pids[1], SIGCONT)
        // w0 keeps serving its experts; the late reply of w1 to the timed-out request is dropped as stale.
        let mine = [x[0], x[2]]
        assertBitwiseEqual(try remote.forward(layer: 0, batches: mine, training: false),
                           try reference.forward(layer: 0, batches: mine, training: false), "after a timeout")
    }

    func testNoWorkerOutlivesAFailingTestOrAFailedLaunch() throws {
        struct Boom: Error {}
        var pids: [pid_t] = []
        func failingTest() throws {
            let cluster = try LocalCluster(workers: 2, transport: .tcp)
            pids = cluster.processIDs
            XCTAssertEqual(Set(childProcesses()), Set(pids))
            throw Boom()  // no explicit shutdown: deinit must clean up
        }
        XCTAssertThrowsError(try failingTest())
        XCTAssertEqual(pids.count, 2)
        for p in pids { XCTAssertTrue(processIsGone(p), "worker \(p) outlived its cluster") }
        XCTAssertEqual(childProcesses(), [])

        // Workers that die at start-up: init fails naming one, and leaves nothing behind.
        XCTAssertThrowsError(try LocalCluster(workers: 2, transport: .ipc, extraArguments: ["--max-frame-bytes", "0"])) { e in
            XCTAssertTrue("\(e)".contains("exited"), "\(e)")
        }
        XCTAssertEqual(childProcesses(), [])

        // Workers notice their parent's death: a worker whose --parent-pid is not its parent exits at once.
        let orphan = try LocalCluster.spawn(try LocalCluster.locateThorBinary(),
                                            ["worker", "--connect", "ipc:///nonexistent/thor.sock", "--parent-pid", "1"])
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(10)
        var reaped = false
        while Date() < deadline {
            if waitpid(orphan, &status, WNOHANG) == orphan { reaped = true; break }
            usleep(10_000)
        }
        if !reaped { kill(orphan, SIGKILL); waitpid(orphan, &status, 0) }
        XCTAssertTrue(reaped, "a worker whose parent is gone kept running")
    }
}
