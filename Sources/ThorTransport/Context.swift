import CZMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A libzmq failure: the operation and libzmq's message for `errno`.
public struct ZMQError: Error, CustomStringConvertible, Equatable {
    /// The `errno` libzmq reported (`EAGAIN`, `EHOSTUNREACH`, `ETERM`, …).
    public let code: Int32
    /// What was being done, e.g. `bind tcp://127.0.0.1:*`.
    public let operation: String

    public init(code: Int32, operation: String) { self.code = code; self.operation = operation }

    /// The error for the current `zmq_errno()`.
    static func last(_ operation: String) -> ZMQError { ZMQError(code: zmq_errno(), operation: operation) }

    public var description: String { "\(operation): \(String(cString: zmq_strerror(code))) (errno \(code))" }
}

/// A libzmq context: owns the I/O threads every socket of this process uses.
///
/// Contexts are thread-safe; sockets are not (see `Socket`). The context is
/// terminated when the last reference (sockets hold one) goes away.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    /// - Parameter ioThreads: libzmq I/O threads (1 handles about a gigabyte per second).
    public init(ioThreads: Int = 1) throws {
        guard let h = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        handle = h
        if zmq_ctx_set(h, ZMQ_IO_THREADS, Int32(max(1, ioThreads))) != 0 {
            let e = ZMQError.last("zmq_ctx_set ZMQ_IO_THREADS")
            zmq_ctx_term(h)
            throw e
        }
    }

    deinit {
        // Every socket holds a strong reference, so all are closed by now.
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    /// Whether libzmq supports a capability (`"ipc"`, `"curve"`, …).
    public static func has(_ capability: String) -> Bool { zmq_has(capability) == 1 }

    /// libzmq's version as (major, minor, patch).
    public static var version: (Int, Int, Int) {
        var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
        zmq_version(&a, &b, &c)
        return (Int(a), Int(b), Int(c))
    }
}
