import XCTest
import Foundation
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
        XCTAssertTrue(coordinator.joined.contains("w"))
    }
}
