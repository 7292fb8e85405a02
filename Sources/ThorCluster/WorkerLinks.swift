import ThorWire
import ThorTransport

/// One coordinator link of an expert worker: the data DEALER, its connection monitor and the beat
/// DEALER (`BeatChannel`), with the link's connection state. A worker of a single-coordinator run
/// has one; with data-parallel coordinators (docs/data-parallel.md, step 3) one per coordinator,
/// link 0 the leader's. Every link registers on its own and beats on its own; the requests of all
/// links feed the one compute thread, whose `ExpertHost` keeps the shards apart.
final class WorkerLink {
    let endpoint: String
    let socket: Socket
    let monitor: Socket
    let beats: Socket
    var connected = false
    var everConnected = false
    var handshakes = 0
    var disconnectedSince = monotonicSeconds()
    /// The beat connection's monitor, and since when it has been down (nil: up). Its ZMTP PING times out
    /// on a coordinator that is hung or gone without closing the connection: the orphan clock.
    let beatMonitor: Socket
    var beatDownSince: Double? = monotonicSeconds()

    init(endpoint: String, worker: ExpertWorker, context: ZMQContext) throws {
        let options = worker.options
        self.endpoint = endpoint
        let socket = try Socket(context: context, type: .dealer)
        do {
            try socket.setRoutingID(Registration.routingID(workerID: options.workerID, incarnation: worker.incarnation))
            try socket.setHighWaterMarks(send: 0, receive: 0)
            try socket.setReconnectInterval(milliseconds: 100)
            // No ZMTP PING on the data connection: libzmq takes only a whole frame as its answer, so a
            // reply still crossing when the timeout ran out had its connection closed under it and was lost.
            // The beat connection keeps its PING (it carries only beats) and tells a hung coordinator.
            let hardLimit = options.maxFrameBytes > Int.max / 10 ? -1 : Int64(options.maxFrameBytes) * 10
            try socket.setMaxMessageSize(hardLimit)
            if let s = options.security { try socket.makeCurveClient(keyPair: s.keyPair, serverPublicKey: s.serverPublicKey) }
        } catch {
            socket.close()
            throw error
        }
        let monitor: Socket
        do {
            monitor = try socket.monitor(events: [.handshakeSucceeded, .disconnected, .handshakeFailedAuth, .handshakeFailedProtocol])
        } catch {
            socket.close()
            throw error
        }
        do {
            // Beats also go out on a connection of their own, where they never wait behind a reply in flight.
            (beats, beatMonitor) = try worker.connectBeatChannel(context: context, endpoint: endpoint)
        } catch {
            monitor.close()
            socket.close()
            throw error
        }
        self.socket = socket
        self.monitor = monitor
    }

    /// Since when this coordinator has been out of reach: its data connection closed, or its beat
    /// connection's PING unanswered (nil: reachable).
    var unreachableSince: Double? {
        let data = connected ? nil : disconnectedSince
        switch (data, beatDownSince) {
        case let (a?, b?): return min(a, b)
        case let (a, b): return a ?? b
        }
    }

    /// Reads the beat connection's monitor events.
    func pollBeatMonitor() throws {
        while let event = try beatMonitor.receiveEvent(timeout: 0) {
            if event.kind.contains(.handshakeSucceeded) {
                beatDownSince = nil
            } else if event.kind.contains(.disconnected), beatDownSince == nil {
                beatDownSince = monotonicSeconds()
            }
        }
    }

    func close() {
        beatMonitor.close()
        beats.close()
        monitor.close()
        socket.close()
    }

    /// The link index as the 4-byte frame that follows a request (and its reply) through the compute pipe.
    static func tag(_ link: Int) -> Frame {
        var v = UInt32(link).littleEndian
        return withUnsafeBytes(of: &v) { Frame(copying: $0) }
    }

    static func index(of frame: Frame) -> Int {
        guard frame.count == 4 else { return 0 }
        return Int(UInt32(littleEndian: frame.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
    }
}

extension ExpertWorker {
    /// Requests only the leader coordinator (link 0) may send: they change the placement, the weights,
    /// or settle and read the step's gradients, which needs every shard (the leader knows when all
    /// are in). A follower sends Forward and Backward of its shard, and may Export and Heartbeat.
    static func isLeaderOnly(_ message: WireMessage) -> Bool {
        switch message {
        case .assign, .importRequest, .step, .zeroGradients, .gradNormRequest, .gradientsRequest, .applyGradients, .shutdown:
            return true
        default:
            return false
        }
    }

    /// Refuses a leader-only request from a follower coordinator's link (`NOT_LEADER`; nothing changes).
    static func checkLeaderOnly(_ message: WireMessage, link: Int) throws {
        guard link != 0, isLeaderOnly(message) else { return }
        throw WorkerRequestError(code: .notLeader,
                                 message: "\(message.name) may come only from the leader coordinator (link 0), not from follower coordinator link \(link)")
    }
}
