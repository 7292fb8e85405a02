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

/// A worker that dies while it owes a reply and comes back as a new process before the
/// exchange ends: the request is lost with the process that received it. The coordinator must
/// not send it again to the new process, which holds none of the old one's state and would
/// answer `notAssigned` (seen once in ~30 runs of `ExpertLossTests`' every-worker-crash test
/// under load: "worker w0 failed Backward layer 1: worker w0 has no experts assigned yet").
final class RestartedWorkerExchangeTests: XCTestCase {
    /// One process of worker "w0", played by a raw DEALER in a thread of this process. It
    /// registers (after `startAfter` seconds), beats every `interval` on its data connection and
    /// answers each Forward per `answer`: `nil` plays a process that dies on receiving it (it
    /// stops beating and never replies; its connection stays open, as a killed process's can
    /// until the kernel closes it), otherwise the reply it sends.
    private final class FakeProcess: @unchecked Sendable {
        let registration: Registration
        private let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var _stop = false, _forwards = 0
        var stop: Bool { get { lock.withLock { _stop } } set { lock.withLock { _stop = newValue } } }
        /// Forward requests this process received.
        var forwards: Int { lock.withLock { _forwards } }

        init(endpoint: String, incarnation: UInt64, interval: Double, startAfter: Double = 0, answer: (@Sendable (Int) -> WireMessage)?) {
            registration = Registration(workerID: "w0", threads: 1, pid: Int(getpid()), hostname: "test", incarnation: incarnation)
            Thread { [self] in
                defer { done.signal() }
                if startAfter > 0 { usleep(useconds_t(startAfter * 1e6)) }
                do { try serve(endpoint, interval: interval, answer: answer) } catch { XCTFail("fake w0: \(error)") }
            }.start()
        }

        func finish() { stop = true; done.wait() }

        private func serve(_ endpoint: String, interval: Double, answer: (@Sendable (Int) -> WireMessage)?) throws {
            let context = try ZMQContext()
            let data = try Socket(context: context, type: .dealer)
            defer { data.close() }
            try data.setRoutingID(registration.routingID)
            try data.connect(endpoint)
            func frames(_ id: UInt64, _ m: WireMessage) -> [Frame] {
                WireCodec.encode(Envelope(requestID: id, sender: "w0", message: m)).zmqFrames()
            }
            try data.send(frames(0, .register(registration)))
            var nextBeat = MonotonicClock.seconds()
            while !stop {
                let now = MonotonicClock.seconds()
                if now >= nextBeat {
                    nextBeat = now + interval
                    try data.send(frames(0, .heartbeat(sequence: 1, sentUnixNanos: 0)))
                }
                guard let got = try data.receive(timeout: 0.01) else { continue }
                let e = try WireCodec.decode(frames: got[...])
                if case .heartbeat(let seq, _) = e.message, e.requestID != 0 {  // the coordinator's registration check
                    try data.send(frames(e.requestID, .heartbeat(sequence: seq, sentUnixNanos: 0)))
                    continue
                }
                guard case .forward(let layer, _, _, _) = e.message else { continue }
                lock.withLock { _forwards += 1 }
                guard let answer else { while !stop { usleep(10_000) }; return }  // hangs for good: no reply, no more beats
                try data.send(frames(e.requestID, answer(layer)))
            }
        }
    }

    func testRequestOwedByADeadProcessIsLostNotResentToItsSuccessor() throws {
        // Liveness window 3 × 0.1 s: the successor (registering at ≈ 0.1 s) replaces the silent
        // first process at ≈ 0.3–0.4 s; an unanswered request is sent again after 0.6 s, well
        // before the exchange's 20 s deadline — to the successor, were the request not lost.
        let coordinator = try ClusterCoordinator(bind: "tcp://127.0.0.1:*", heartbeatInterval: 0.1, heartbeatLiveness: 3)
        coordinator.deadlines.initialRetry = 0.6
        var resends: [String] = []
        coordinator.onResend = { worker, _, why in resends.append("\(worker): \(why)") }
        let first = FakeProcess(endpoint: coordinator.endpoint, incarnation: 0xa, interval: 0.1, answer: nil)
        defer { first.finish() }
        try coordinator.waitForWorkers(count: 1, timeout: 20)

        // The restarted process: registers while the first still owes the reply, and refuses
        // any Forward, as a new `thor worker` without experts does.
        let successor = FakeProcess(endpoint: coordinator.endpoint, incarnation: 0xb, interval: 0.1, startAfter: 0.1) { _ in
            .error(code: .notAssigned, message: "worker w0 has no experts assigned yet")
        }
        defer { successor.finish() }
        var rng = RandomGenerator(seed: 5)
        let batches = randomBatches(experts: 2, modelDim: 4, rng: &rng)
        let outcomes = try coordinator.exchangeTolerant([(worker: "w0", message: .forward(layer: 0, training: true, batches: batches, replyDType: nil))],
                                                        operation: "Forward layer 0", timeout: 20)
        XCTAssertEqual(first.forwards, 1)
        guard case .lost(let reason) = outcomes[0] else {
            return XCTFail("the request the dead process owed came back as \(outcomes[0]) (resends: \(resends))")
        }
        XCTAssertTrue(reason.contains("new"), reason)
        XCTAssertEqual(successor.forwards, 0, "the new process was sent the old one's request (resends: \(resends))")
        XCTAssertEqual(coordinator.registrations["w0"]?.incarnation, 0xb, "the new process is registered")
    }
}
