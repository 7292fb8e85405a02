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

/// Beats on a connection of their own (`BeatChannel`): a worker whose replies are still in
/// flight — its data connection silent for longer than the liveness window — is not declared
/// lost while its I/O thread beats; a worker silent on both connections still is.
final class BeatChannelTests: XCTestCase {
    /// A worker played by raw DEALERs in a thread of this process: `data` (registers, answers
    /// requests, beats like any worker) and `beats` (routing id `data + BeatChannel.suffix`).
    /// Its Forward reply (an echo of the tokens) is held `replyDelay` seconds, during which its
    /// data connection is silent, as when a large reply is crossing it; meanwhile it beats on
    /// the beat connection only while `beatOnChannel`, and sends a forged reply there (which the
    /// coordinator must ignore: only beats count on that connection).
    private final class FakeWorker: @unchecked Sendable {
        let registration = Registration(workerID: "fake", threads: 1, pid: Int(getpid()), hostname: "test", incarnation: 0x5eed)
        let interval: Double
        let replyDelay: Double
        private let lock = NSLock()
        private var _stop = false, _beatOnChannel = true
        var stop: Bool { get { lock.withLock { _stop } } set { lock.withLock { _stop = newValue } } }
        var beatOnChannel: Bool { get { lock.withLock { _beatOnChannel } } set { lock.withLock { _beatOnChannel = newValue } } }
        private let done = DispatchSemaphore(value: 0)

        init(endpoint: String, interval: Double, replyDelay: Double) {
            self.interval = interval
            self.replyDelay = replyDelay
            Thread { [self] in
                defer { done.signal() }
                do { try serve(endpoint) } catch { XCTFail("fake worker: \(error)") }
            }.start()
        }

        func finish() { stop = true; done.wait() }

        private func serve(_ endpoint: String) throws {
            let context = try ZMQContext()
            let data = try Socket(context: context, type: .dealer)
            let beats = try Socket(context: context, type: .dealer)
            defer { data.close(); beats.close() }
            try data.setRoutingID(registration.routingID)
            try beats.setRoutingID(BeatChannel.route(forDataRoute: registration.routingID))
            try data.connect(endpoint)
            try beats.connect(endpoint)
            func frames(_ id: UInt64, _ m: WireMessage) -> [Frame] {
                WireCodec.encode(Envelope(requestID: id, sender: "fake", message: m)).zmqFrames()
            }
            func beat() -> WireMessage { .heartbeat(sequence: 1, sentUnixNanos: 0) }
            try data.send(frames(0, .register(registration)))
            var nextBeat = MonotonicClock.seconds()
            var held: (at: Double, frames: [Frame])? = nil
            while !stop {
                let now = MonotonicClock.seconds()
                if now >= nextBeat {
                    nextBeat = now + interval
                    if held == nil { try data.send(frames(0, beat())) }  // behind a reply in flight: not yet out
                    if beatOnChannel { try beats.send(frames(0, beat())) }
                }
                if let h = held, now >= h.at {
                    try data.send(h.frames)
                    held = nil
                }
                guard let got = try data.receive(timeout: 0.01) else { continue }
                let e = try WireCodec.decode(frames: got[...])
                switch e.message {
                case .heartbeat(let seq, _) where e.requestID != 0:
                    try data.send(frames(e.requestID, .heartbeat(sequence: seq, sentUnixNanos: 0)))
                case .forward(let layer, _, let batches, _):
                    // A forged reply on the beat connection: scaled tokens, which must not be taken.
                    let forged = batches.map { b -> ExpertBatch in
                        let t = Tensor(copying: b.tokens)
                        for i in 0..<t.count { t.pointer[i] *= 2 }
                        return ExpertBatch(expert: b.expert, tokens: t)
                    }
                    try beats.send(frames(e.requestID, .forwardReply(layer: layer, outputs: forged)))
                    held = (MonotonicClock.seconds() + replyDelay, frames(e.requestID, .forwardReply(layer: layer, outputs: batches)))
                default: break
                }
            }
        }
    }

    func testWorkerWhoseReplyIsInFlightIsAliveWhileItBeatsOnItsBeatConnection() throws {
        // Liveness window 3 × 0.1 s; the reply is held 1.2 s, four windows.
        let coordinator = try ClusterCoordinator(bind: "tcp://127.0.0.1:*", heartbeatInterval: 0.1, heartbeatLiveness: 3)
        let fake = FakeWorker(endpoint: coordinator.endpoint, interval: 0.1, replyDelay: 1.2)
        defer { fake.finish() }
        try coordinator.waitForWorkers(count: 1, timeout: 20)
        var rng = RandomGenerator(seed: 11)
        let batches = randomBatches(experts: 2, modelDim: 4, rng: &rng)
        let t0 = monotonicSeconds()
        let outcomes = try coordinator.exchangeTolerant([(worker: "fake", message: .forward(layer: 0, training: false, batches: batches, replyDType: nil))],
                                                        operation: "Forward layer 0", timeout: 20)
        let took = monotonicSeconds() - t0
        XCTAssertTrue(coordinator.lost.isEmpty, "declared lost while beating on its beat connection: \(coordinator.lost)")
        guard case .forwardReply(_, let outs)? = outcomes[0].message else { return XCTFail("no ForwardReply: \(outcomes[0])") }
        // The reply came from the data connection, not the forged one from the beat connection.
        assertBitwiseEqual(outs.map(\.tokens), batches.map(\.tokens), "echoed tokens")
        XCTAssertGreaterThanOrEqual(took, 1.1, "the reply was held 1.2 s")
        XCTAssertTrue(coordinator.isAlive("fake"))

        // Silent on both connections: declared lost after the liveness window, as before.
        fake.beatOnChannel = false
        let outcomes2 = try coordinator.exchangeTolerant([(worker: "fake", message: .forward(layer: 0, training: false, batches: batches, replyDType: nil))],
                                                         operation: "Forward layer 0", timeout: 20)
        guard case .lost(let reason) = outcomes2[0] else { return XCTFail("a silent worker was not declared lost: \(outcomes2[0])") }
        XCTAssertTrue(reason.contains("missed 3 heartbeats"), reason)
        let loss = try XCTUnwrap(coordinator.lost["fake"])
        XCTAssertGreaterThan(loss.silentSeconds, 0.3)
        XCTAssertLessThan(loss.silentSeconds, 0.9, "detected within about one window")
    }

    /// A real `thor worker` beats on both connections: its data connection (what a coordinator
    /// without beat channels hears) and its beat connection.
    func testWorkerBeatsOnItsDataAndItsBeatConnection() throws {
        let raw = try RawCoordinator(arguments: ["--heartbeat-interval", "0.05"])
        defer {
            raw.stop()
            XCTAssertTrue(processIsGone(raw.pid), "worker outlived the test")
        }
        guard case .register(let r) = try raw.receive().message else { return XCTFail("expected Register first") }
        XCTAssertEqual(raw.route, r.routingID)
        let end = monotonicSeconds() + 20
        while raw.beatRoutes.count < 2 && monotonicSeconds() < end {
            usleep(200_000)
            guard case .heartbeat = try raw.call(.heartbeat(sequence: 1, sentUnixNanos: 0)).1.message else { return XCTFail("heartbeat") }
        }
        XCTAssertEqual(raw.beatRoutes, [r.routingID, BeatChannel.route(forDataRoute: r.routingID)])
        XCTAssertEqual(raw.route, r.routingID, "replies come from the data connection")
    }
}
