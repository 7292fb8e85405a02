import CZMQ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One part of a ZeroMQ message (a `zmq_msg_t`), owned by this object.
///
/// Frames are sent without copying when made with `init(adoptingMalloced:count:)`;
/// a received frame exposes its bytes in place. After a successful send the frame is empty.
public final class Frame {
    let message: UnsafeMutablePointer<zmq_msg_t>

    /// An empty frame (to receive into, or to send as a delimiter).
    public init() {
        message = .allocate(capacity: 1)
        zmq_msg_init(message)
    }

    /// A frame holding a copy of `bytes`.
    public init(copying bytes: UnsafeRawBufferPointer) {
        message = .allocate(capacity: 1)
        zmq_msg_init_size(message, bytes.count)
        if bytes.count > 0 { memcpy(zmq_msg_data(message), bytes.baseAddress!, bytes.count) }
    }

    /// A frame holding the UTF-8 bytes of `string`.
    public convenience init(_ string: String) {
        self.init(Array(string.utf8))
    }

    /// A frame holding a copy of `bytes`.
    public init(_ bytes: [UInt8]) {
        message = .allocate(capacity: 1)
        zmq_msg_init_size(message, bytes.count)
        bytes.withUnsafeBytes { b in
            if b.count > 0 { memcpy(zmq_msg_data(message), b.baseAddress!, b.count) }
        }
    }

    /// A frame that takes ownership of `pointer` (from `malloc`), freed by libzmq
    /// with `free` once sent (or when this frame is dropped unsent). No copy is made.
    public init(adoptingMalloced pointer: UnsafeMutableRawPointer, count: Int) {
        message = .allocate(capacity: 1)
        let rc = zmq_msg_init_data(message, pointer, count, { data, _ in free(data) }, nil)
        precondition(rc == 0, "zmq_msg_init_data failed")
    }

    /// A frame that sends `bytes` in place, without copying: it holds `owner`, which
    /// keeps the bytes alive, until libzmq is done with them (after the send, on its
    /// I/O thread) or the frame is dropped unsent. The bytes must not change meanwhile.
    public init(borrowing bytes: UnsafeRawBufferPointer, owner: AnyObject) {
        message = .allocate(capacity: 1)
        guard bytes.count > 0, let base = bytes.baseAddress else { zmq_msg_init(message); return }
        let hint = Unmanaged.passRetained(owner).toOpaque()
        let rc = zmq_msg_init_data(message, UnsafeMutableRawPointer(mutating: base), bytes.count,
                                   { _, hint in Unmanaged<AnyObject>.fromOpaque(hint!).release() }, hint)
        precondition(rc == 0, "zmq_msg_init_data failed")
    }

    deinit {
        zmq_msg_close(message)
        message.deallocate()
    }

    /// Number of bytes.
    public var count: Int { zmq_msg_size(message) }

    /// Calls `body` with the bytes, keeping the frame alive meanwhile.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(bytes) }
    }

    /// The bytes, valid while this frame is alive and unsent. The optimizer may
    /// end a frame's life right after its last use: prefer `withUnsafeBytes`.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: zmq_msg_data(message), count: zmq_msg_size(message))
    }

    /// The bytes as an array (copies).
    public var array: [UInt8] { withUnsafeBytes { Array($0) } }

    /// The bytes decoded as UTF-8 (invalid sequences repaired).
    public var string: String { withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
}
