import CZMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A ZAP handler (ZeroMQ RFC 27) that admits CURVE clients by public key: the
/// authentication half of the ZeroMQ guide's Ironhouse pattern.
///
/// It binds `inproc://zeromq.zap.01` in a context, so every CURVE server socket of
/// that context asks it about each connecting client; it answers 200 for a key in the
/// allowed set and 400 for any other, and records and logs each refusal (which key,
/// from which address). Give it the server socket too (`watching:`) and it also reports
/// connections that failed before reaching it (a client without CURVE, or one that
/// encrypted for another server key). Create it before the server socket binds: without
/// a handler libzmq admits every key. It runs on its own thread until `stop()` or deinit.
public final class ZAPHandler: @unchecked Sendable {
    /// A connection the handler (or the handshake before it) turned away.
    public struct Refusal: Sendable, Equatable, CustomStringConvertible {
        /// The client's public key (Z85), nil when the handshake failed before the key was known.
        public var key: String?
        /// The client's address (its IP for tcp) or, for a failed handshake, the server's endpoint.
        public var address: String
        public var reason: String

        public var description: String {
            "refused a connection from \(address)" + (key.map { " with public key \($0)" } ?? "") + ": \(reason)"
        }
    }

    /// The ZAP endpoint libzmq asks (fixed by RFC 27).
    public static let endpoint = "inproc://zeromq.zap.01"

    private let allowed: [String: String]
    private let log: @Sendable (String) -> Void
    private var mutex = pthread_mutex_t()
    private var _refusals: [Refusal] = []
    private var _admitted: [String] = []
    private var _counts: [String: Int] = [:]
    private var _stop = false
    private var thread: pthread_t?

    /// Binds the ZAP endpoint in `context` and starts answering.
    /// - Parameters:
    ///   - allowedKeys: admitted public keys (Z85) → a name for logs (e.g. the key file).
    ///   - server: a CURVE server socket of the same context whose failed handshakes to report
    ///     (call from the thread that owns it).
    ///   - log: called on the handler's thread with each refusal's description.
    public init(context: ZMQContext, allowedKeys: [String: String], watching server: Socket? = nil,
                log: @escaping @Sendable (String) -> Void) throws {
        for key in allowedKeys.keys { try CurveKey.validate(key) }
        allowed = allowedKeys
        self.log = log
        pthread_mutex_init(&mutex, nil)
        let rep = try Socket(context: context, type: .reply)
        do {
            try rep.bind(Self.endpoint)
        } catch let e as ZMQError where e.code == EADDRINUSE {
            throw ZMQError(code: e.code, operation: "bind \(Self.endpoint) (this context already has a ZAP handler)")
        }
        let monitor = try server?.monitor(events: [.handshakeFailedProtocol, .handshakeFailedNoDetail])
        // The sockets move to the handler thread (thread start is a full memory barrier).
        let sockets = SocketPair(rep: rep, monitor: monitor)
        thread = startTransportThread { [self] in self.serve(sockets) }
    }

    deinit {
        stop()
        pthread_mutex_destroy(&mutex)
    }

    /// Stops answering and closes the handler's sockets (idempotent). Stop it after the
    /// server socket is closed: a CURVE server with no handler admits every key.
    public func stop() {
        locked { _stop = true }
        if let t = thread { pthread_join(t, nil); thread = nil }
    }

    /// Connections refused so far, oldest first (the first 10 000).
    public var refusals: [Refusal] { locked { _refusals } }
    /// Public keys admitted so far (one entry per handshake).
    public var admitted: [String] { locked { _admitted } }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return body()
    }

    /// Records a refusal and logs it: the first of each kind, then the 10th, 100th, … (a
    /// refused client retries every 100 ms, and the log must stay readable).
    private func refuse(_ r: Refusal) {
        let count: Int = locked {
            if _refusals.count < 10_000 { _refusals.append(r) }
            _counts[r.description, default: 0] += 1
            return _counts[r.description]!
        }
        var n = count
        while n % 10 == 0 { n /= 10 }
        if n == 1 { log(r.description + (count > 1 ? " (\(count) times so far)" : "")) }
    }

    private func serve(_ sockets: SocketPair) {
        let rep = sockets.rep, monitor = sockets.monitor
        defer { rep.close(); monitor?.close() }
        let watched = [rep] + (monitor.map { [$0] } ?? [])
        while !locked({ _stop }) {
            guard let ready = try? Socket.poll(watched, timeout: 0.05) else { continue }
            if ready[0], let request = try? rep.receive(timeout: 0) {
                let reply = answer(request)
                try? rep.send(reply.map { Frame($0) })
            }
            if ready.count > 1, ready[1], let m = monitor {
                while let event = try? m.receiveEvent(timeout: 0) {
                    let why: String
                    switch event.value {
                    case UInt32(bitPattern: ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH):
                        why = "the client does not use CURVE (a worker without --key / --server-public-key?)"
                    case UInt32(bitPattern: ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC):
                        why = "CURVE handshake failed (the client encrypted for another server key: check its --server-public-key)"
                    default:
                        if event.kind.contains(.handshakeFailedNoDetail) {
                            why = "the client closed the connection during the security handshake (a worker without keys, or with another server key?)"
                        } else {
                            why = "handshake failed (ZMTP protocol error 0x\(String(event.value, radix: 16)))"
                        }
                    }
                    refuse(Refusal(key: nil, address: event.endpoint, reason: why))
                }
            }
        }
    }

    /// The reply frames to one ZAP request: version, request id, status, text, user id, metadata.
    private func answer(_ request: [Frame]) -> [[UInt8]] {
        guard request.count >= 6 else { return [Array("1.0".utf8), [], Array("500".utf8), Array("malformed ZAP request".utf8), [], []] }
        let version = request[0].array, id = request[1].array
        let address = request[3].string, mechanism = request[5].string
        func reply(_ code: String, _ text: String, user: String = "") -> [[UInt8]] {
            [version, id, Array(code.utf8), Array(text.utf8), Array(user.utf8), []]
        }
        guard request[0].string == "1.0" else { return reply("500", "unsupported ZAP version") }
        guard mechanism == "CURVE", request.count >= 7, let key = CurveKey.z85(request[6].array) else {
            refuse(Refusal(key: nil, address: address, reason: "mechanism \(mechanism) is not CURVE"))
            return reply("400", "CURVE required")
        }
        guard let name = allowed[key] else {
            refuse(Refusal(key: key, address: address, reason: "the key is not in the allowed set"))
            return reply("400", "unknown key")
        }
        locked { _admitted.append(key) }
        return reply("200", "OK", user: name)
    }
}

/// The handler's sockets on their way to its thread.
private final class SocketPair: @unchecked Sendable {
    let rep: Socket
    let monitor: Socket?
    init(rep: Socket, monitor: Socket?) { self.rep = rep; self.monitor = monitor }
}

private final class TransportThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Starts a joinable thread running `body`.
func startTransportThread(_ body: @escaping () -> Void) -> pthread_t {
    let box = Unmanaged.passRetained(TransportThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        Unmanaged<TransportThreadBody>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
}

extension SocketEvent.Kind {
    /// The security handshake failed for lack of detail (e.g. the peer closed the connection).
    public static let handshakeFailedNoDetail = SocketEvent.Kind(rawValue: UInt32(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL))
    /// The security handshake failed: a protocol error (value: the `ZMQ_PROTOCOL_ERROR_*` code).
    public static let handshakeFailedProtocol = SocketEvent.Kind(rawValue: UInt32(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL))
    /// The server's ZAP handler refused this client (value: the ZAP status code, e.g. 400).
    public static let handshakeFailedAuth = SocketEvent.Kind(rawValue: UInt32(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH))
}
