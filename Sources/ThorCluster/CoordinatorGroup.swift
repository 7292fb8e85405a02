import ThorTensor
import ThorExperts
import ThorTransport
#if canImport(Glibc)
import Glibc
#endif

/// What data-parallel coordinators say to each other (docs/data-parallel.md, step 3): the leader
/// (rank 0) binds a ROUTER, each follower (rank 1 … C−1) connects a DEALER to it. Not the worker
/// protocol: two frames, a small header (kind, rank, step, numbers, text) and an optional payload
/// of raw little-endian f32 (the dense gradients).
public struct GroupMessage: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// Follower → leader, once: its rank, step, and text "PARAMETERS_SHA256 CONFIGURATION_SHA256".
        case hello = 1
        /// Leader → follower: the placement (text, `GroupMessage.placementText`) and replication.
        case placement = 2
        /// Follower → leader: every placement worker registered with it.
        case ready = 3
        /// Follower → leader: its shard of `step` is done (every Backward answered); numbers are its
        /// loss contributions, the payload its dense gradient (parameters in order), text the attempt
        /// (0, or the `redo`'s).
        case shardDone = 4
        /// Leader → followers: the step committed; numbers [learning rate, clip scale], the payload
        /// the dense gradient summed in shard order.
        case apply = 5
        /// Leader → followers: send your parameter hash.
        case hashRequest = 6
        /// Follower → leader: SHA-256 of its dense parameters (text) after `step`.
        case hash = 7
        /// Leader → followers: stop (text: why).
        case stop = 8
        /// Follower → leader: it failed (text: why) and exits.
        case failed = 9
        /// Follower → leader: its attempt (numbers [attempt]) at `step` met lost workers (text: their
        /// ids, space-separated); it waits for `redo` (docs/data-parallel.md, step 4).
        case lost = 10
        /// Leader → followers: drop your work of `step` and redo it (numbers [attempt]) on the new
        /// placement (text, as in `placement`); the workers' state of the step was rolled back.
        case redo = 11
    }
    public var kind: Kind
    public var rank: Int
    public var step: Int
    public var numbers: [Double]
    public var text: String
    public var payload: [Float]?

    public init(_ kind: Kind, rank: Int = 0, step: Int = 0, numbers: [Double] = [], text: String = "", payload: [Float]? = nil) {
        self.kind = kind; self.rank = rank; self.step = step; self.numbers = numbers; self.text = text; self.payload = payload
    }

    func frames() -> [Frame] {
        var h: [UInt8] = [kind.rawValue]
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { h += $0 } }
        put(UInt32(rank)); put(UInt64(step)); put(UInt32(numbers.count))
        for n in numbers { put(n.bitPattern) }
        let t = Array(text.utf8)
        put(UInt32(t.count)); h += t
        var out = [Frame(h)]
        if let payload { out.append(payload.withUnsafeBytes { Frame(copying: $0) }) }
        return out
    }

    init(frames: [Frame]) throws {
        guard frames.count == 1 || frames.count == 2 else { throw ClusterError.transport("coordinator group: a message of \(frames.count) frames") }
        let bytes: [UInt8] = frames[0].withUnsafeBytes { Array($0) }
        var i = 0
        func take<T: FixedWidthInteger>(_: T.Type) throws -> T {
            guard i + MemoryLayout<T>.size <= bytes.count else { throw ClusterError.transport("coordinator group: truncated header") }
            var v = T.zero
            withUnsafeMutableBytes(of: &v) { $0.copyBytes(from: bytes[i ..< i + MemoryLayout<T>.size]) }
            i += MemoryLayout<T>.size
            return T(littleEndian: v)
        }
        guard let k = Kind(rawValue: try take(UInt8.self)) else { throw ClusterError.transport("coordinator group: unknown message kind") }
        kind = k
        rank = Int(try take(UInt32.self))
        step = Int(try take(UInt64.self))
        let n = Int(try take(UInt32.self))
        guard n <= 1 << 20 else { throw ClusterError.transport("coordinator group: \(n) numbers") }
        numbers = try (0..<n).map { _ in Double(bitPattern: try take(UInt64.self)) }
        let tl = Int(try take(UInt32.self))
        guard i + tl <= bytes.count else { throw ClusterError.transport("coordinator group: truncated text") }
        text = String(decoding: bytes[i ..< i + tl], as: UTF8.self)
        if frames.count == 2 {
            guard frames[1].count % 4 == 0 else { throw ClusterError.transport("coordinator group: payload of \(frames[1].count) bytes") }
            payload = frames[1].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        } else {
            payload = nil
        }
    }

    /// The placement as text: one line per expert, `layer expert host host…` (primary first), after a
    /// first line `workers w0 w1 …` and a second `replication MODE`.
    public static func placementText(_ p: Placement, replication: ReplicationMode) -> String {
        var lines = ["workers " + p.workers.joined(separator: " "), "replication " + replication.rawValue]
        for k in p.keys.sorted() { lines.append("\(k.layer) \(k.expert) " + p.hosts[k]!.joined(separator: " ")) }
        return lines.joined(separator: "\n")
    }

    public static func placement(fromText text: String) throws -> (Placement, ReplicationMode) {
        var workers: [String] = [], mode = ReplicationMode.shippedGradients
        var hosts: [ExpertKey: [String]] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            if f.first == "workers" { workers = Array(f.dropFirst()); continue }
            if f.first == "replication", f.count == 2, let m = ReplicationMode(rawValue: f[1]) { mode = m; continue }
            guard f.count >= 3, let l = Int(f[0]), let e = Int(f[1]) else { throw ClusterError.placement("coordinator group: bad placement line '\(line)'") }
            hosts[ExpertKey(layer: l, expert: e)] = Array(f.dropFirst(2))
        }
        return (try Placement(hosts: hosts, workers: workers), mode)
    }
}

/// The leader's end of the coordinator group: a ROUTER the followers connect to.
public final class CoordinatorGroupLeader {
    public let context: ZMQContext
    private let socket: Socket
    public let endpoint: String
    public let followers: Int
    private var routes: [Int: Frame] = [:]
    private var routeBytes: [Int: [UInt8]] = [:]

    /// Binds `endpoint` for `followers` followers (ranks 1 … followers).
    public init(bind endpoint: String, followers: Int) throws {
        self.followers = followers
        do {
            context = try ZMQContext()
            socket = try Socket(context: context, type: .router)
            try socket.setHighWaterMarks(send: 0, receive: 0)
            try socket.setRouterMandatory(true)
            try socket.bind(endpoint)
            self.endpoint = try socket.lastEndpoint()
        } catch let e as ZMQError {
            throw ClusterError.transport("coordinator group at \(endpoint): \(e.description)")
        }
    }

    deinit { socket.close() }

    /// The next message from any follower within `timeout` seconds (nil: none).
    public func receive(timeout: Double) throws -> GroupMessage? {
        guard let frames = try socket.receive(timeout: timeout), frames.count >= 2 else { return nil }
        let m = try GroupMessage(frames: Array(frames.dropFirst()))
        guard m.rank >= 1, m.rank <= followers else {
            throw ClusterError.transport("coordinator group: a message from rank \(m.rank), expected 1…\(followers)")
        }
        routeBytes[m.rank] = frames[0].withUnsafeBytes { Array($0) }
        return m
    }

    /// Sends `message` to follower `rank` (it must have said hello).
    public func send(_ message: GroupMessage, to rank: Int) throws {
        guard let r = routeBytes[rank] else { throw ClusterError.transport("coordinator group: follower \(rank) has not connected") }
        do { try socket.send([Frame(r)] + message.frames()) } catch let e as ZMQError {
            throw ClusterError.transport("coordinator group: send to follower \(rank): \(e.description)")
        }
    }

    /// Sends `message` to every follower that connected, ignoring failures (for stop).
    public func broadcastBestEffort(_ message: GroupMessage) {
        for rank in routeBytes.keys.sorted() {
            try? socket.send([Frame(routeBytes[rank]!)] + message.frames(), dontWait: true)
        }
    }

    public func setLinger(milliseconds: Int) { try? socket.setLinger(milliseconds: milliseconds) }
}

/// A follower's end of the coordinator group: a DEALER connected to the leader.
public final class CoordinatorGroupFollower {
    private let context: ZMQContext
    private let socket: Socket
    public let rank: Int

    public init(leader endpoint: String, rank: Int) throws {
        self.rank = rank
        do {
            context = try ZMQContext()
            socket = try Socket(context: context, type: .dealer)
            try socket.setRoutingID("coordinator-\(rank)")
            try socket.setHighWaterMarks(send: 0, receive: 0)
            try socket.setReconnectInterval(milliseconds: 100)
            try socket.connect(endpoint)
        } catch let e as ZMQError {
            throw ClusterError.transport("coordinator group: connect to the leader at \(endpoint): \(e.description)")
        }
    }

    deinit { socket.close() }

    public func send(_ message: GroupMessage) throws {
        var m = message
        m.rank = rank
        do { try socket.send(m.frames()) } catch let e as ZMQError {
            throw ClusterError.transport("coordinator group: send to the leader: \(e.description)")
        }
    }

    public func receive(timeout: Double) throws -> GroupMessage? {
        guard let frames = try socket.receive(timeout: timeout) else { return nil }
        return try GroupMessage(frames: frames)
    }

    public func setLinger(milliseconds: Int) { try? socket.setLinger(milliseconds: milliseconds) }
}
