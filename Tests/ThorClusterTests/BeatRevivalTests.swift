import XCTest
import Foundation
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// A worker declared dead comes back only by a message on its data connection: after a long
/// stop both of its connections reconnect, and a beat on the beat connection can arrive while
/// the data connection is still down; taken for a return, the next request to the worker failed
/// as unreachable and it was declared dead again (ExpertLossTests' every-worker-stopped restore
/// failed that way about 1 run in 10).
final class BeatRevivalTests: XCTestCase {
    func testABeatOnTheBeatConnectionDoesNotReviveADeadWorkerItsDataConnectionDoes() throws {
        let dir = NSTemporaryDirectory() + "thor-revival-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let coordinator = try ClusterCoordinator(bind: "ipc://\(dir)/c.sock", heartbeatInterval: 0.05, heartbeatLiveness: 3)
        let context = try ZMQContext()
        let r = Registration(workerID: "w", threads: 1, pid: Int(getpid()), hostname: "test", incarnation: 0x77)
        func frames(_ m: WireMessage) -> [Frame] { WireCodec.encode(Envelope(requestID: 0, sender: "w", message: m)).zmqFrames() }
        let beat = WireMessage.heartbeat(sequence: 1, sentUnixNanos: 0)
        func dealer(_ route: String) throws -> Socket {
            let s = try Socket(context: context, type: .dealer)
            try s.setRoutingID(route)
            try s.setLinger(milliseconds: 0)
            try s.connect(coordinator.endpoint)
            return s
        }
        var data = try dealer(r.routingID)
        let beats = try dealer(BeatChannel.route(forDataRoute: r.routingID))
        defer { data.close(); beats.close() }
        try data.send(frames(.register(r)))
        for _ in 0..<100 where coordinator.registrations["w"] == nil { try coordinator.poll(timeout: 0.02) }
        XCTAssertNotNil(coordinator.registrations["w"], "registered")

        coordinator.declareLost("w", reason: "test: stopped")
        data.close()  // its data connection is down (reconnecting)
        usleep(300_000)  // past the liveness window: a sign of life now would be a return
        try beats.send(frames(beat))
        try coordinator.poll(timeout: 0.2)
        XCTAssertNotNil(coordinator.lost["w"], "a beat on the beat connection alone must not revive it")
        XCTAssertFalse(coordinator.joined.contains("w"))

        data = try dealer(r.routingID)  // the data connection is back
        try data.send(frames(beat))
        for _ in 0..<50 where coordinator.lost["w"] != nil { try coordinator.poll(timeout: 0.02) }
        XCTAssertNil(coordinator.lost["w"], "a beat on its data connection revives it")
        XCTAssertFalse(coordinator.joined.contains("w"), "it joins once it has said what it holds (or a window later)")

        // Revived by a beat, what it holds is unknown: it is told it was declared dead (its connection
        // held, so nothing else would make it register), and its Register is taken as what it holds.
        XCTAssertEqual(coordinator.registrations["w"]?.hosted, [])
        var notice: Envelope? = nil
        for _ in 0..<50 where notice == nil { notice = try data.receive(timeout: 0.02).flatMap { try? WireCodec.decode(frames: $0[...]) } }
        guard case .error(.declaredDead, _)? = notice?.message else { return XCTFail("no DECLARED_DEAD notice: \(String(describing: notice))") }
        XCTAssertEqual(notice?.requestID, 0)
        var back = r
        back.hosted = [ExpertKey(layer: 0, expert: 1)]
        back.committedStep = 7
        try data.send(frames(.register(back)))
        for _ in 0..<50 where coordinator.registrations["w"]?.hosted != back.hosted { try coordinator.poll(timeout: 0.02) }
        XCTAssertEqual(coordinator.registrations["w"]?.hosted, back.hosted)
        XCTAssertEqual(coordinator.registrations["w"]?.committedStep, 7)
        XCTAssertNil(coordinator.lost["w"])
        XCTAssertTrue(coordinator.joined.contains("w"), "joined, holding what it named")
    }

    /// A worker that does not answer `DECLARED_DEAD` (an older protocol-5 worker) still joins, holding
    /// nothing, a liveness window after the notice: as before the notice existed.
    func testARevivedWorkerThatDoesNotRegisterAgainJoinsAWindowLater() throws {
        let dir = NSTemporaryDirectory() + "thor-revival-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let coordinator = try ClusterCoordinator(bind: "ipc://\(dir)/c.sock", heartbeatInterval: 0.05, heartbeatLiveness: 3)
        let context = try ZMQContext()
        let r = Registration(workerID: "w", threads: 1, pid: Int(getpid()), hostname: "test", incarnation: 0x78)
        func frames(_ m: WireMessage) -> [Frame] { WireCodec.encode(Envelope(requestID: 0, sender: "w", message: m)).zmqFrames() }
        let data = try Socket(context: context, type: .dealer)
        defer { data.close() }
        try data.setRoutingID(r.routingID)
        try data.setLinger(milliseconds: 0)
        try data.connect(coordinator.endpoint)
        try data.send(frames(.register(r)))
        for _ in 0..<100 where coordinator.registrations["w"] == nil { try coordinator.poll(timeout: 0.02) }
        coordinator.acceptJoin("w")
        coordinator.declareLost("w", reason: "test: stopped")
        usleep(300_000)
        try data.send(frames(.heartbeat(sequence: 1, sentUnixNanos: 0)))
        for _ in 0..<50 where coordinator.lost["w"] != nil { try coordinator.poll(timeout: 0.02) }
        XCTAssertNil(coordinator.lost["w"])
        XCTAssertFalse(coordinator.joined.contains("w"))
        for _ in 0..<50 where !coordinator.joined.contains("w") { try coordinator.poll(timeout: 0.02) }
        XCTAssertTrue(coordinator.joined.contains("w"), "joins without answering, after the window")
        XCTAssertEqual(coordinator.registrations["w"]?.hosted, [])
    }
}
