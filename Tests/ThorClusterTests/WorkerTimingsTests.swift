import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster

/// Workers time what they do for each request and say so in the reply; the coordinator sums it
/// per worker, and still works with workers that send no timings (older builds).
final class WorkerTimingsTests: XCTestCase {
    let spec = ExpertSpec(modelDim: 8, hiddenDim: 16, activation: .relu, seed: 3)

    func send(_ worker: ExpertWorker, _ message: WireMessage, arrivedAt: Double? = nil) throws -> Envelope {
        let frame = WireCodec.encode(Envelope(requestID: 5, sender: "coordinator", message: message))
        let (out, exit) = worker.handle(frame.zmqFrames(), arrivedAt: arrivedAt)
        XCTAssertNil(exit)
        let reply = try XCTUnwrap(out)
        return try reply.withUnsafeBytes { try WireCodec.decode($0, payloads: reply.payloads) }
    }

    func testComputeRepliesCarryTheWorkersTimings() throws {
        let worker = ExpertWorker(options: WorkerOptions(endpoint: "ipc:///nonexistent", workerID: "w0"))
        // A refused request computed nothing: an Error reply carries no timings.
        let refused = try send(worker, .forward(layer: 0, training: true, batches: [], replyDType: nil))
        guard case .error(.notAssigned, _) = refused.message else { return XCTFail("got \(refused.message.name)") }
        XCTAssertNil(refused.timings)

        let keys = [ExpertKey(layer: 0, expert: 0), ExpertKey(layer: 0, expert: 1)]
        _ = try send(worker, .assign(Assignment(spec: spec, keys: keys)))
        var rng = RandomGenerator(seed: 4)
        let batches = randomBatches(experts: 2, modelDim: spec.modelDim, rng: &rng)
        let arrived = MonotonicClock.seconds() - 0.05   // it "waited" 50 ms behind other work
        let forward = try send(worker, .forward(layer: 0, training: true, batches: batches, replyDType: nil), arrivedAt: arrived)
        guard case .forwardReply = forward.message else { return XCTFail("got \(forward.message.name)") }
        let t = try XCTUnwrap(forward.timings, "a Forward reply carries the worker's timings")
        XCTAssertGreaterThan(t.compute, 0)
        XCTAssertGreaterThanOrEqual(t.computeCPU, 0)
        XCTAssertGreaterThan(t.decode, 0)
        XCTAssertGreaterThan(t.encode, 0)
        XCTAssertGreaterThanOrEqual(t.queue, 0.05)
        XCTAssertLessThan(t.queue, 5)
        let backward = try send(worker, .backward(layer: 0, gradients: batches, replyDType: nil))
        XCTAssertGreaterThan(try XCTUnwrap(backward.timings).compute, 0)
        XCTAssertEqual(backward.timings?.queue, 0, "no arrival time given: no queue time")
        XCTAssertNotNil(try send(worker, .gradNormRequest).timings)
        XCTAssertNotNil(try send(worker, .step(learningRate: 0.01, clipScale: 1, step: 1)).timings)
    }

    /// A worker from before the timings (a raw DEALER answering like one) still serves: the
    /// coordinator counts its replies and records no timings for it.
    func testCoordinatorWorksWithAWorkerThatSendsNoTimings() throws {
        let coordinator = try ClusterCoordinator(bind: "tcp://127.0.0.1:*")
        let endpoint = coordinator.endpoint
        let stop = Flag()
        let done = DispatchSemaphore(value: 0)
        let oldWorker = Thread {
            defer { done.signal() }
            do {
                let context = try ZMQContext()
                let dealer = try Socket(context: context, type: .dealer)
                defer { dealer.close() }
                let registration = Registration(workerID: "old", threads: 1, pid: Int(getpid()), hostname: "test", incarnation: 77)
                try dealer.setRoutingID(registration.routingID)
                try dealer.connect(endpoint)
                func send(_ e: Envelope) throws {
                    let f = WireCodec.encode(e)
                    try dealer.send(f.zmqFrames())
                }
                try send(Envelope(requestID: 0, sender: "old", message: .register(registration)))
                var beat = MonotonicClock.seconds()
                while !stop.value {
                    if MonotonicClock.seconds() - beat > 0.1 {
                        beat = MonotonicClock.seconds()
                        try send(Envelope(requestID: 0, sender: "old", message: .heartbeat(sequence: 1, sentUnixNanos: 0)))
                    }
                    guard let frames = try dealer.receive(timeout: 0.05) else { continue }
                    let e = try WireCodec.decode(frames: frames[...])
                    switch e.message {
                    case .heartbeat(let seq, _) where e.requestID != 0:
                        try send(Envelope(requestID: e.requestID, sender: "old", message: .heartbeat(sequence: seq, sentUnixNanos: 0)))
                    case .forward(let layer, _, let batches, _):
                        // Echo the tokens, no timings (what a worker without them sends).
                        try send(Envelope(requestID: e.requestID, sender: "old", message: .forwardReply(layer: layer, outputs: batches)))
                    default: break
                    }
                }
            } catch {
                XCTFail("old worker: \(error)")
            }
        }
        oldWorker.start()
        defer { stop.value = true; done.wait() }
        try coordinator.waitForWorkers(count: 1, timeout: 20)
        let timer = PhaseTimer()
        coordinator.phaseTimer = timer
        let before = coordinator.workerTotals["old"] ?? WorkerTotals()  // the registration probe's heartbeat reply
        var rng = RandomGenerator(seed: 5)
        let batches = randomBatches(experts: 2, modelDim: 4, rng: &rng)
        coordinator.traces = []
        let outcomes = try coordinator.exchangeTolerant([(worker: "old", message: .forward(layer: 0, training: false, batches: batches, replyDType: nil))],
                                                        operation: "Forward layer 0", phase: .forward, timeout: 20)
        // The exchange's trace: sent, arrived, decoded, in that order; no timings from this worker.
        let traces = try XCTUnwrap(coordinator.traces)
        XCTAssertEqual(traces.count, 1)
        let trace = try XCTUnwrap(traces.first)
        XCTAssertEqual(trace.phase, .forward)
        XCTAssertEqual(trace.operation, "Forward layer 0")
        let reply = try XCTUnwrap(trace.last)
        XCTAssertEqual(trace.replies.count, 1)
        XCTAssertEqual(reply.worker, "old")
        XCTAssertNil(reply.timings)
        XCTAssertEqual(reply.servedSeconds, 0)
        XCTAssertLessThanOrEqual(trace.started, reply.sentAt)
        XCTAssertLessThanOrEqual(reply.sentAt, trace.sent)
        XCTAssertLessThan(trace.sent, reply.arrivedAt)
        XCTAssertLessThanOrEqual(reply.arrivedAt, trace.finished)
        XCTAssertEqual(reply.transferSeconds, reply.arrivedAt - reply.sentAt)
        guard case .forwardReply(_, let outs)? = outcomes[0].message else { return XCTFail("no ForwardReply: \(outcomes[0])") }
        assertBitwiseEqual(outs.map(\.tokens), batches.map(\.tokens), "echoed tokens")
        let totals = try XCTUnwrap(coordinator.workerTotals["old"]) - before
        XCTAssertEqual(totals.replies, 1)
        XCTAssertEqual(totals.timedReplies, 0)
        XCTAssertEqual(totals.timings, WorkerTimings())
        // The coordinator's own phases of the forward exchange were recorded.
        XCTAssertGreaterThan(timer[.wait], 0)
        XCTAssertGreaterThan(timer[.encode], 0)
        XCTAssertEqual(timer[.waitBackward], 0)
        // Only forward and backward exchanges are traced, and only while `traces` is set.
        _ = try coordinator.heartbeat(timeout: 20)
        XCTAssertEqual(coordinator.traces?.count, 1)
        coordinator.traces = nil
    }
}

/// A flag shared with a test thread.
private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var _value = false
    var value: Bool {
        get { lock.lock(); defer { lock.unlock() }; return _value }
        set { lock.lock(); _value = newValue; lock.unlock() }
    }
}
