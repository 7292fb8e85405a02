import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP proxy on 127.0.0.1 for tests: every connection accepted is relayed to `target` with each
/// direction of each connection held to `bytesPerSecond` on its own (no queue shared between
/// connections, unlike a rate limit on a link: a worker's beat connection is never held behind
/// its data connection's bulk). Stops, closing every connection, on `stop()`.
final class ThrottlingProxy: @unchecked Sendable {
    let port: UInt16
    private let listener: Int32
    private let target: UInt16
    private let rate: Double
    private let lock = NSLock()
    private var stopped = false
    private var threads = 0
    private var fds: [Int32] = []

    init(targetPort: UInt16, bytesPerSecond: Double) throws {
        target = targetPort
        rate = bytesPerSecond
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = Self.address(port: 0)
        guard withUnsafePointer(to: &a, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }) == 0,
              listen(l, 16) == 0 else { close(l); throw POSIXError(.EADDRINUSE) }
        var bound = sockaddr_in(), len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(l, $0, &len) } }
        port = UInt16(bigEndian: bound.sin_port)
        listener = l
        start { [self] in acceptLoop() }
    }

    static func address(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func start(_ body: @escaping @Sendable () -> Void) {
        lock.withLock { threads += 1 }
        Thread { [self] in body(); lock.withLock { threads -= 1 } }.start()
    }

    private func acceptLoop() {
        while !isStopped {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = Self.address(port: target)
            guard withUnsafePointer(to: &a, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }) == 0 else {
                close(client); close(upstream); continue
            }
            lock.withLock { fds += [client, upstream] }
            start { [self] in pump(from: client, to: upstream) }
            start { [self] in pump(from: upstream, to: client) }
        }
    }

    /// Copies `from` → `to` at no more than `rate` bytes per second (64 KiB at a time).
    private func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var sent = 0.0
        let t0 = Date()
        while !isStopped {
            var p = pollfd(fd: from, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            if n <= 0 { shutdown(to, Int32(SHUT_WR)); return }
            var off = 0
            while off < n {
                let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL)) }  // a closed peer: EPIPE, no SIGPIPE
                if w <= 0 { return }
                off += w
            }
            sent += Double(n)
            let due = sent / rate - Date().timeIntervalSince(t0)
            if due > 0 { usleep(UInt32(due * 1_000_000)) }
        }
    }

    func stop() {
        lock.withLock { stopped = true }
        while lock.withLock({ threads }) > 0 { usleep(10_000) }
        for fd in lock.withLock({ fds }) { close(fd) }
        close(listener)
    }
}
