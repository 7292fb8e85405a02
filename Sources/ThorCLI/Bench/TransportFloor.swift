import Foundation
import ThorTensor
import ThorTransport
import ThorCluster

/// What moving one distributed pass's tensor bytes costs with no expert compute at all
/// (for `thor bench distributed`): a ROUTER with one libzmq I/O thread, as the coordinator's,
/// sends each of `framesPerPeer.count` echo peers its frames (zero-copy, as requests are sent),
/// and each peer — a thread with its own libzmq context, as a worker process has — sends the
/// received frames straight back (as large as a reply: a forward or backward reply has its
/// request's shapes). The round trip until every echo arrived is the transport's floor for one
/// exchange of that size: both kernel copies of each direction and every I/O-thread wake-up,
/// none of the worker's own hand-offs or compute. `oneCopySeconds` is a plain memcpy of the same
/// bytes there and back: what one copy per direction (a shared-memory path) would cost.
struct TransportFloor {
    /// Best and median round trip of one pass (seconds) over the timed rounds.
    var bestSeconds = Double.infinity, medianSeconds = Double.infinity
    /// memcpy of every peer's bytes once each way (best of the rounds).
    var oneCopySeconds = Double.infinity
    /// Bytes shipped each way.
    var bytes = 0

    static func measure(framesPerPeer: [[Int]], transport: LocalCluster.Transport, repeats: Int) throws -> TransportFloor {
        var m = TransportFloor()
        m.bytes = framesPerPeer.joined().reduce(0, +)
        let context = try ZMQContext()
        let router = try Socket(context: context, type: .router)
        defer { router.close() }
        try router.setRouterMandatory(true)
        try router.setHighWaterMarks(send: 0, receive: 0)
        let directory = try ScalingRateProbe.bindLoopback(router, transport, name: "thor-floor")
        defer { if let directory { try? FileManager.default.removeItem(atPath: directory) } }
        let endpoint = try router.lastEndpoint()

        // Echo peers: each connects, says hello, then echoes every message until an empty frame.
        let peers = framesPerPeer.count
        let done = DispatchGroup()
        for p in 0..<peers {
            done.enter()
            let echo = Thread {
                defer { done.leave() }
                guard let c = try? ZMQContext(), let s = try? Socket(context: c, type: .dealer) else { return }
                defer { s.close() }
                guard (try? s.setRoutingID("echo\(p)")) != nil, (try? s.setHighWaterMarks(send: 0, receive: 0)) != nil,
                      (try? s.connect(endpoint)) != nil, (try? s.send([Frame("hello")])) != nil else { return }
                while let frames = try? s.receive(timeout: 30) {
                    if frames.count == 1 && frames[0].count == 0 { return }
                    guard (try? s.send(frames)) != nil else { return }
                }
            }
            echo.start()
        }
        var routes: [String] = []
        defer {
            for r in routes { try? router.send([Frame(r), Frame()], dontWait: true) }
            _ = done.wait(timeout: .now() + 5)
        }
        while routes.count < peers {
            guard let hello = try router.receive(timeout: 10), hello.count == 2 else {
                throw ClusterError.launch("transport floor over \(transport.rawValue): an echo peer did not connect")
            }
            routes.append(hello[0].string)
        }
        routes.sort()

        // The payloads: one buffer per frame, written once (warm), sent in place.
        let buffers = framesPerPeer.map { $0.map { Tensor(shape: [max(1, $0 / 4)]) } }
        let destination = UnsafeMutableRawPointer.allocate(byteCount: max(1, m.bytes), alignment: 64)
        defer { destination.deallocate() }
        memset(destination, 0, max(1, m.bytes))
        var rounds: [Double] = []
        for round in 0...max(1, repeats) {
            let t0 = now()
            for (p, route) in routes.enumerated() {
                let frames = buffers[p].map { Frame(borrowing: UnsafeRawBufferPointer(start: $0.pointer, count: $0.count * 4), owner: $0) }
                try router.send([Frame(route)] + frames)
            }
            for _ in 0..<peers {
                guard let echo = try router.receive(timeout: 30), echo.count >= 2 else {
                    throw ClusterError.launch("transport floor over \(transport.rawValue): an echo did not come back")
                }
                blackHole(echo)
            }
            let t = now() - t0
            // One copy each way: what a shared-memory path would have to do.
            let c0 = now()
            for direction in 0..<2 {
                var offset = 0
                for b in buffers.joined() {
                    if direction == 0 { memcpy(destination + offset, b.pointer, b.count * 4) }
                    else { memcpy(b.pointer, destination + offset, b.count * 4) }
                    offset += b.count * 4
                }
            }
            blackHole(destination)
            let c = now() - c0
            if round > 0 {
                rounds.append(t)
                m.oneCopySeconds = min(m.oneCopySeconds, c)
            }
        }
        rounds.sort()
        m.bestSeconds = rounds.first ?? .infinity
        m.medianSeconds = rounds.isEmpty ? .infinity : rounds[rounds.count / 2]
        return m
    }
}
