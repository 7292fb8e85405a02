import CZMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// ZeroMQ socket types thor uses.
public enum SocketType: Sendable {
    case router, dealer, pair, request, reply, push, pull

    var raw: Int32 {
        switch self {
        case .router: return ZMQ_ROUTER
        case .dealer: return ZMQ_DEALER
        case .pair: return ZMQ_PAIR
        case .request: return ZMQ_REQ
        case .reply: return ZMQ_REP
        case .push: return ZMQ_PUSH
        case .pull: return ZMQ_PULL
        }
    }
}

/// A ZeroMQ socket. Not thread-safe: create, use and close it on one thread
/// (hence not `Sendable`). Closed on `close()` or deinit, with the linger set.
public final class Socket {
    public let context: ZMQContext
    public let type: SocketType
    private var handle: UnsafeMutableRawPointer?

    public init(context: ZMQContext, type: SocketType) throws {
        self.context = context
        self.type = type
        guard let h = zmq_socket(context.handle, type.raw) else { throw ZMQError.last("zmq_socket") }
        handle = h
        // Default: drop unsent messages on close rather than blocking the process.
        try setOption(ZMQ_LINGER, Int32(0), name: "ZMQ_LINGER")
    }

    deinit { close() }

    /// Closes the socket (idempotent). Unsent messages wait up to the linger time.
    public func close() {
        if let h = handle { zmq_close(h); handle = nil }
    }

    public var isClosed: Bool { handle == nil }

    private func live(_ op: String) throws -> UnsafeMutableRawPointer {
        guard let h = handle else { throw ZMQError(code: ENOTSOCK, operation: "\(op) on a closed socket") }
        return h
    }

    // MARK: endpoints

    public func bind(_ endpoint: String) throws {
        if zmq_bind(try live("bind"), endpoint) != 0 { throw ZMQError.last("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        if zmq_connect(try live("connect"), endpoint) != 0 { throw ZMQError.last("connect \(endpoint)") }
    }

    public func disconnect(_ endpoint: String) throws {
        if zmq_disconnect(try live("disconnect"), endpoint) != 0 { throw ZMQError.last("disconnect \(endpoint)") }
    }

    /// The endpoint last bound (with the actual port after binding `tcp://host:*`).
    public func lastEndpoint() throws -> String {
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        if zmq_getsockopt(try live("getsockopt"), ZMQ_LAST_ENDPOINT, &buffer, &size) != 0 {
            throw ZMQError.last("getsockopt ZMQ_LAST_ENDPOINT")
        }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    // MARK: options

    public func setOption(_ option: Int32, _ value: Int32, name: String) throws {
        var v = value
        if zmq_setsockopt(try live("setsockopt"), option, &v, MemoryLayout<Int32>.size) != 0 {
            throw ZMQError.last("setsockopt \(name)=\(value)")
        }
    }

    public func setOption(_ option: Int32, _ value: Int64, name: String) throws {
        var v = value
        if zmq_setsockopt(try live("setsockopt"), option, &v, MemoryLayout<Int64>.size) != 0 {
            throw ZMQError.last("setsockopt \(name)=\(value)")
        }
    }

    public func setOption(_ option: Int32, bytes: [UInt8], name: String) throws {
        let h = try live("setsockopt")
        let rc = bytes.withUnsafeBytes { zmq_setsockopt(h, option, $0.baseAddress, $0.count) }
        if rc != 0 { throw ZMQError.last("setsockopt \(name)") }
    }

    /// Messages queued per peer before sends block (DEALER) or drop (ROUTER); 0 = unlimited.
    public func setHighWaterMarks(send: Int, receive: Int) throws {
        try setOption(ZMQ_SNDHWM, Int32(send), name: "ZMQ_SNDHWM")
        try setOption(ZMQ_RCVHWM, Int32(receive), name: "ZMQ_RCVHWM")
    }

    /// How long `close` waits to deliver unsent messages (milliseconds; -1 forever).
    public func setLinger(milliseconds: Int) throws {
        try setOption(ZMQ_LINGER, Int32(milliseconds), name: "ZMQ_LINGER")
    }

    /// Peers sending a larger message are disconnected by libzmq (-1 = no limit).
    public func setMaxMessageSize(_ bytes: Int64) throws {
        try setOption(ZMQ_MAXMSGSIZE, bytes, name: "ZMQ_MAXMSGSIZE")
    }

    /// The identity a ROUTER peer sees for this socket (set before connect).
    public func setRoutingID(_ id: String) throws {
        try setOption(ZMQ_ROUTING_ID, bytes: Array(id.utf8), name: "ZMQ_ROUTING_ID")
    }

    /// ROUTER: fail with EHOSTUNREACH when sending to an unknown peer instead of dropping.
    public func setRouterMandatory(_ on: Bool) throws {
        try setOption(ZMQ_ROUTER_MANDATORY, Int32(on ? 1 : 0), name: "ZMQ_ROUTER_MANDATORY")
    }

    /// ZMTP heartbeats: ping every `interval`, drop the connection when no reply within `timeout` (seconds).
    public func setHeartbeat(interval: Double, timeout: Double) throws {
        try setOption(ZMQ_HEARTBEAT_IVL, Int32(interval * 1000), name: "ZMQ_HEARTBEAT_IVL")
        try setOption(ZMQ_HEARTBEAT_TIMEOUT, Int32(timeout * 1000), name: "ZMQ_HEARTBEAT_TIMEOUT")
    }

    /// Delay between reconnect attempts (milliseconds).
    public func setReconnectInterval(milliseconds: Int) throws {
        try setOption(ZMQ_RECONNECT_IVL, Int32(milliseconds), name: "ZMQ_RECONNECT_IVL")
    }

    // MARK: send / receive

    /// Sends `frames` as one multipart message. Frames are consumed (left empty).
    /// With `dontWait`, throws EAGAIN instead of blocking when the peer's queue is full.
    public func send(_ frames: [Frame], dontWait: Bool = false) throws {
        let h = try live("send")
        for (i, f) in frames.enumerated() {
            var flags: Int32 = i + 1 < frames.count ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            while zmq_msg_send(f.message, h, flags) < 0 {
                let e = zmq_errno()
                if e == EINTR { continue }
                throw ZMQError(code: e, operation: "send frame \(i + 1) of \(frames.count)")
            }
        }
    }

    /// Receives one multipart message; nil when nothing arrives within `timeout`
    /// seconds (nil timeout: block; 0: don't wait).
    public func receive(timeout: Double? = nil) throws -> [Frame]? {
        if let t = timeout, !(try poll(timeout: t)) { return nil }
        let h = try live("receive")
        var frames: [Frame] = []
        while true {
            let f = Frame()
            while zmq_msg_recv(f.message, h, 0) < 0 {
                let e = zmq_errno()
                if e == EINTR { continue }
                throw ZMQError(code: e, operation: "receive")
            }
            frames.append(f)
            if zmq_msg_more(f.message) == 0 { return frames }
        }
    }

    /// Whether a message can be received within `timeout` seconds.
    public func poll(timeout: Double) throws -> Bool {
        try Socket.poll([self], timeout: timeout)[0]
    }

    /// Waits until one of `sockets` is readable or `timeout` seconds pass
    /// (negative: forever); returns which are readable.
    public static func poll(_ sockets: [Socket], timeout: Double) throws -> [Bool] {
        var items = try sockets.map { s in
            zmq_pollitem_t(socket: try s.live("poll"), fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        }
        let ms: Int = timeout < 0 ? -1 : Int((timeout * 1000).rounded(.up))
        while true {
            let rc = zmq_poll(&items, Int32(items.count), ms)
            if rc >= 0 { break }
            let e = zmq_errno()
            if e == EINTR { continue }
            throw ZMQError(code: e, operation: "poll")
        }
        return items.map { ($0.revents & Int16(ZMQ_POLLIN)) != 0 }
    }

    // MARK: monitoring

    /// Starts a monitor publishing this socket's connection events on a PAIR
    /// socket at `inproc://…`; returns the connected PAIR socket to read `SocketEvent`s from.
    public func monitor(events: SocketEvent.Kind) throws -> Socket {
        let h = try live("monitor")
        let endpoint = "inproc://thor-monitor-\(UInt(bitPattern: h))"
        if zmq_socket_monitor(h, endpoint, Int32(events.rawValue)) != 0 {
            throw ZMQError.last("zmq_socket_monitor \(endpoint)")
        }
        let pair = try Socket(context: context, type: .pair)
        try pair.connect(endpoint)
        return pair
    }

    /// Reads one monitor event from a socket returned by `monitor(events:)`;
    /// nil when none arrives within `timeout` seconds.
    public func receiveEvent(timeout: Double = 0) throws -> SocketEvent? {
        guard let frames = try receive(timeout: timeout), frames.count >= 1, frames[0].count >= 6 else { return nil }
        let (kind, value) = frames[0].withUnsafeBytes { b in
            (UInt32(b.loadUnaligned(fromByteOffset: 0, as: UInt16.self)), b.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        }
        return SocketEvent(kind: SocketEvent.Kind(rawValue: kind), value: value,
                           endpoint: frames.count > 1 ? frames[1].string : "")
    }
}

/// A connection event from a socket monitor.
public struct SocketEvent: Sendable, Equatable {
    public struct Kind: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let connected = Kind(rawValue: UInt32(ZMQ_EVENT_CONNECTED))
        public static let connectDelayed = Kind(rawValue: UInt32(ZMQ_EVENT_CONNECT_DELAYED))
        public static let connectRetried = Kind(rawValue: UInt32(ZMQ_EVENT_CONNECT_RETRIED))
        public static let accepted = Kind(rawValue: UInt32(ZMQ_EVENT_ACCEPTED))
        public static let closed = Kind(rawValue: UInt32(ZMQ_EVENT_CLOSED))
        public static let disconnected = Kind(rawValue: UInt32(ZMQ_EVENT_DISCONNECTED))
        public static let handshakeSucceeded = Kind(rawValue: UInt32(ZMQ_EVENT_HANDSHAKE_SUCCEEDED))
        public static let monitorStopped = Kind(rawValue: UInt32(ZMQ_EVENT_MONITOR_STOPPED))
        public static let all = Kind(rawValue: UInt32(ZMQ_EVENT_ALL))
    }
    public let kind: Kind
    /// Event value (a file descriptor, an errno or an interval, depending on the kind).
    public let value: UInt32
    public let endpoint: String
}
