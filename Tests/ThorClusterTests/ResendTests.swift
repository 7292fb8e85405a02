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

/// Resending only what was lost (docs/reliability.md): a request the worker's beats say it is
/// serving, or a reply they say is on its way, is not sent again however long it takes; a request
/// the worker never got still is.
final class ResendTests: XCTestCase {
    /// Worker "w0" played by raw DEALERs in a thread: registers, beats every `interval` on its
    /// beat connection reporting what it holds (`Envelope.progress`, as `thor worker` does), and
    /// answers Export requests with a state of `floats` floats after `compute` seconds, the reply then
    /// held back `inTransit` seconds (a slow link: the beats already say it was answered).
    /// With `dropFirst`, the first Export is ignored without a trace (lost on the way).
    private final class FakeWorker: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var _stop = false, _exports = 0
        var stop: Bool { get { lock.withLock { _stop } } set { lock.withLock { _stop = newValue } } }
        /// Export requests received (resends included).
        var exports: Int { lock.withLock { _exports } }

        init(endpoint: String, interval: Double, floats: Int, compute: Double, inTransit: Double, dropFirst: Bool = false) {
            Thread { [self] in
                defer { done.signal() }
                do {
                    try serve(endpoint, interval: interval, floats: floats, compute: compute, inTransit: inTransit, dropFirst: dropFirst)
                } catch { XCTFail("fake w0: \(error)") }
            }.start()
        }

        func finish() { stop = true; done.wait() }

        private func serve(_ endpoint: String, interval: Double, floats: Int, compute: Double, inTransit: Double, dropFirst: Bool) throws {
            let registration = Registration(workerID: "w0", threads: 1, pid: Int(getpid()), hostname: "test", incarnation: 0xe)
            let context = try ZMQContext()
            let data = try Socket(context: context, type: .dealer)
            defer { data.close() }
            try data.setRoutingID(registration.routingID)
            try data.setHighWaterMarks(send: 0, receive: 0)
            try data.connect(endpoint)
            // Beats on a connection of their own (`BeatChannel`, as `thor worker`): never behind the 108 MB reply.
            let beats = try Socket(context: context, type: .dealer)
            defer { beats.close() }
            try beats.setRoutingID(BeatChannel.route(forDataRoute: registration.routingID))
            try beats.connect(endpoint)
            func frames(_ id: UInt64, _ m: WireMessage, progress: [RequestProgress] = []) -> [Frame] {
                WireCodec.encode(Envelope(requestID: id, sender: "w0", message: m, progress: progress)).zmqFrames()
            }
            try data.send(frames(0, .register(registration)))
            var progress: [RequestProgress] = []
            var work: [(ready: Double, sendAt: Double, id: UInt64)] = []
            var reply: WireMessage? = nil
            var nextBeat = MonotonicClock.seconds()
            var ignored = false
            while !stop {
                let now = MonotonicClock.seconds()
                if let w = work.first, now >= w.ready {
                    if reply == nil, let i = progress.firstIndex(where: { $0.requestID == w.id }) {
                        // "Answered": from now on the reply is on its way (its size as the real encoder makes it).
                        let state: WireMessage = .expertStates([ExpertKey(layer: 0, expert: 0): ["moe.0.experts.0.w1": Tensor(shape: [floats])]])
                        progress[i].replyBytes = UInt64(WireCodec.encode(Envelope(requestID: w.id, sender: "w0", message: state)).totalCount)
                        reply = state
                    }
                    if now >= w.sendAt, let r = reply {
                        try data.send(frames(w.id, r))
                        work.removeFirst()
                        reply = nil
                    }
                }
                if now >= nextBeat {
                    nextBeat = now + interval
                    try beats.send(frames(0, .heartbeat(sequence: 1, sentUnixNanos: 0), progress: progress))
                }
                guard let got = try data.receive(timeout: 0.005) else { continue }
                let e = try WireCodec.decode(frames: got[...])
                if case .heartbeat(let seq, _) = e.message {
                    if e.requestID != 0 { try data.send(frames(e.requestID, .heartbeat(sequence: seq, sentUnixNanos: 0))) }
                    continue
                }
                guard case .exportRequest = e.message else { continue }
                lock.withLock { _exports += 1 }
                if dropFirst, !ignored { ignored = true; continue }
                if progress.contains(where: { $0.requestID == e.requestID }) { continue }  // a repeat: already in hand
                progress.append(RequestProgress(session: e.session, requestID: e.requestID))
                let t = MonotonicClock.seconds()
                work.append((t + compute, t + compute + inTransit, e.requestID))
            }
        }
    }

    private func coordinator() throws -> ClusterCoordinator {
        // A 2 s liveness window (chosen while the data connections still had libzmq's PING timeout at
        // the window, which dropped a connection under a frame still crossing: docs/reliability.md,
        // "The transport's PING timeout"; they have none now).
        let c = try ClusterCoordinator(bind: "tcp://127.0.0.1:*", heartbeatInterval: 0.1, heartbeatLiveness: 20)
        c.deadlines.initialRetry = 0.3   // a short retry: anything slower than 0.3 s was resent before beats told progress
        return c
    }

    /// A 100+ MB Export that the worker computes for 1 s and whose reply then takes 1 s more to
    /// arrive (its beats, every 0.05 s, say so all along) is sent once. Without progress in the
    /// beats, the coordinator sent it again every 0.3 s (3 times; fails with exports == 4).
    func testLargeSlowExportIsSentOnce() throws {
        let c = try coordinator()
        var resends: [String] = []
        c.onResend = { w, op, why in resends.append("\(w) \(op): \(why)") }
        let floats = 27_000_000   // 108 MB
        let fake = FakeWorker(endpoint: c.endpoint, interval: 0.05, floats: floats, compute: 1.0, inTransit: 1.0)
        defer { fake.finish() }
        try c.waitForWorkers(count: 1, timeout: 20)
        c.traces = []
        let outcomes = try c.exchangeTolerant([(worker: "w0", message: .exportRequest(keys: []))], operation: "Export", timeout: 60)
        guard case .expertStates(let state)? = outcomes[0].message else { return XCTFail("no state: \(outcomes[0])") }
        XCTAssertEqual(state[ExpertKey(layer: 0, expert: 0)]?["moe.0.experts.0.w1"]?.count, floats)
        XCTAssertEqual(fake.exports, 1, "resent: \(resends)")
        XCTAssertEqual(c.counters.resends, 0, "\(resends)")
        XCTAssertGreaterThan(c.counters.bytesReceived, 100_000_000)
    }

    /// The control: an Export lost on the way (the worker never heard of it, its beats do not name
    /// it) is still sent again after the retry time, once, and answered; the resend is counted.
    func testLostRequestIsStillSentAgain() throws {
        let c = try coordinator()
        var resends: [String] = []
        c.onResend = { w, op, why in resends.append("\(w) \(op): \(why)") }
        let fake = FakeWorker(endpoint: c.endpoint, interval: 0.05, floats: 1000, compute: 0.01, inTransit: 0, dropFirst: true)
        defer { fake.finish() }
        try c.waitForWorkers(count: 1, timeout: 20)
        let outcomes = try c.exchangeTolerant([(worker: "w0", message: .exportRequest(keys: []))], operation: "Export", timeout: 60)
        guard case .expertStates? = outcomes[0].message else { return XCTFail("no state: \(outcomes[0])") }
        XCTAssertEqual(fake.exports, 2)
        XCTAssertEqual(c.counters.resends, 1, "\(resends)")
        XCTAssertTrue(resends.first?.contains("no reply after") ?? false, "\(resends)")
    }

    /// A real `thor worker`: after answering a request, its beats name it as answered, with the
    /// reply's size in bytes, on both its connections (what the coordinator's resend clock reads).
    func testRealWorkerBeatsNameWhatItAnswered() throws {
        let raw = try RawCoordinator(workerID: "progress", arguments: ["--heartbeat-interval", "0.05"])
        defer {
            raw.stop()
            XCTAssertTrue(processIsGone(raw.pid), "worker outlived the test")
        }
        guard case .register = try raw.receive().message else { return XCTFail("expected Register first") }
        let spec = ExpertSpec(modelDim: 8, hiddenDim: 16, activation: .gelu, seed: 3)
        guard case .ack = try raw.call(.assign(Assignment(spec: spec, keys: [ExpertKey(layer: 0, expert: 0)]))).1.message else {
            return XCTFail("Assign")
        }
        let f = WireCodec.encode(Envelope(requestID: 777, sender: "coordinator", session: 0x5e55, message: .exportRequest(keys: [])))
        guard case .expertStates = try raw.sendRaw(f.zmqFrames()).message else { return XCTFail("Export") }
        var seen: [String: RequestProgress] = [:]   // route → the entry for request 777
        let end = MonotonicClock.seconds() + 10
        while seen.count < 2, MonotonicClock.seconds() < end {
            guard let frames = try raw.router.receive(timeout: 1), frames.count >= 2,
                  let e = try? WireCodec.decode(frames: frames.dropFirst()), e.requestID == 0 else { continue }
            if let p = e.progress.first(where: { $0.requestID == 777 }) { seen[frames[0].string] = p }
        }
        XCTAssertEqual(seen.count, 2, "both connections' beats name the request: \(seen)")
        // 1 expert: 4 tensors, each with 2 Adam moments, as Float32, plus the envelope.
        let parameters: Int = 8 * 16 + 16 + 16 * 8 + 8
        let stateBytes = UInt64(3 * 4 * parameters)
        for (route, p) in seen {
            XCTAssertEqual(p.session, 0x5e55, route)
            XCTAssertTrue(p.answered, route)
            XCTAssertGreaterThan(p.replyBytes, stateBytes, route)
        }
    }

    /// The worker's I/O thread reads the session and request id from an Envelope frame's first
    /// fields without decoding it, and its beats report what it serves and what it answered.
    func testProgressTrackerReportsServingThenAnswered() throws {
        let t = Tensor(shape: [3, 4])
        let request = WireCodec.encode(Envelope(requestID: 300, sender: "coordinator", session: 0xfeed_beef_1234,
                                                message: .forward(layer: 2, training: true, batches: [ExpertBatch(expert: 1, tokens: t)], replyDType: nil),
                                                shard: Shard(index: 1, count: 2))).zmqFrames()
        let ids = request[0].withUnsafeBytes { RequestProgressTracker.peekIDs($0) }
        XCTAssertEqual(ids?.session, 0xfeed_beef_1234)
        XCTAssertEqual(ids?.id, 300)
        XCTAssertNil([UInt8]([0x0a, 0x80]).withUnsafeBytes { RequestProgressTracker.peekIDs($0) }, "a truncated field is no frame")

        var tracker = RequestProgressTracker()
        tracker.handedOn(request)
        let second = WireCodec.encode(Envelope(requestID: 301, sender: "coordinator", session: 7, message: .zeroGradients)).zmqFrames()
        tracker.handedOn(second)
        XCTAssertEqual(tracker.report(), [RequestProgress(session: 0xfeed_beef_1234, requestID: 300), RequestProgress(session: 7, requestID: 301)])
        let reply = WireCodec.encode(Envelope(requestID: 300, sender: "w", message: .ack)).zmqFrames()
        let replyBytes = reply.reduce(0) { $0 + $1.count }
        tracker.answered(reply)
        XCTAssertEqual(tracker.report(), [RequestProgress(session: 0xfeed_beef_1234, requestID: 300, replyBytes: UInt64(replyBytes)),
                                          RequestProgress(session: 7, requestID: 301)])
        tracker.answered([Frame()])  // no reply (a beat): nothing answered
        XCTAssertEqual(tracker.report().count, 1)
        for i in 0..<20 {
            tracker.handedOn(WireCodec.encode(Envelope(requestID: UInt64(400 + i), session: 7, message: .zeroGradients)).zmqFrames())
            tracker.answered(reply)
        }
        XCTAssertEqual(tracker.report().count, RequestProgressTracker.answeredKept, "answered entries are bounded")
        XCTAssertEqual(tracker.report().last?.requestID, 419)
    }

    /// Progress travels in Envelope field 50 and comes back as sent; absent means none.
    func testProgressRoundTrips() throws {
        let p = [RequestProgress(session: 1, requestID: 2), RequestProgress(session: 3, requestID: 4, replyBytes: 151_000_000)]
        let f = WireCodec.encode(Envelope(requestID: 0, sender: "w", message: .heartbeat(sequence: 1, sentUnixNanos: 2), progress: p))
        XCTAssertEqual(try f.withUnsafeBytes { try WireCodec.decode($0, payloads: f.payloads) }.progress, p)
        let g = WireCodec.encode(Envelope(requestID: 0, sender: "w", message: .heartbeat(sequence: 1, sentUnixNanos: 2)))
        XCTAssertEqual(try g.withUnsafeBytes { try WireCodec.decode($0, payloads: g.payloads) }.progress, [])
    }

    /// The resend allowance grows with the bytes on the link, at the slower of the assumed rate and
    /// the median measured one.
    func testTransferAllowanceScalesWithBytes() {
        var d = DeadlineEstimator()
        XCTAssertEqual(d.transferAllowance(bytes: 151_000_000), 151_000_000 / d.assumedLinkBytesPerSecond, accuracy: 1e-9)
        d.recordTransfer(bytes: 100_000, seconds: 10)      // too small to say anything about the link
        XCTAssertEqual(d.linkBytesPerSecond, d.assumedLinkBytesPerSecond)
        d.recordTransfer(bytes: 10_000_000, seconds: 2)    // 5 MB/s: slower than assumed
        XCTAssertEqual(d.linkBytesPerSecond, 5e6, accuracy: 1e-6)
        XCTAssertEqual(d.transferAllowance(bytes: 151_000_000), 30.2, accuracy: 1e-9)
        d.recordTransfer(bytes: 100_000_000, seconds: 0.1)  // 1 GB/s: the median (of 5 and 1000 MB/s) is capped by the assumed rate
        d.recordTransfer(bytes: 100_000_000, seconds: 0.1)
        XCTAssertEqual(d.linkBytesPerSecond, d.assumedLinkBytesPerSecond)
    }
}
