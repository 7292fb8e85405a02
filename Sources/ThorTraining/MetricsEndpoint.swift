import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why the metrics endpoint could not start.
public struct MetricsEndpointError: Error, CustomStringConvertible {
    public let description: String
}

/// A minimal HTTP/1.0 listener serving one text document at `GET /metrics` (the Prometheus
/// text exposition format; anything else is 404). The training thread `publish`es a new
/// document after each step; a background thread accepts scrapes, one at a time, each with a
/// 2-second read deadline, and answers with the document last published. Nothing the
/// listener does touches the model, so a scrape never changes a result. Call `stop()` when
/// done (the listener thread keeps the endpoint alive until then).
public final class MetricsEndpoint: @unchecked Sendable {
    /// The address and port it listens on (the real port when 0 was asked for).
    public let address: String
    public let port: Int
    private let listener: Int32
    private var mutex = pthread_mutex_t()
    private var document = ""
    private var stopping = false
    private var thread: pthread_t?
    private var answered = 0

    /// Scrapes of /metrics answered so far.
    public var scrapes: Int {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return answered
    }

    /// Listens on `address`:`port` (IPv4 dotted quad; port 0 picks a free one). Throws a clear
    /// error for a bad address, a port in use or one it may not bind.
    public init(address: String = "127.0.0.1", port: Int) throws {
        guard (0...65535).contains(port) else {
            throw MetricsEndpointError(description: "metrics port \(port) is out of range (0–65535)")
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, address, &addr.sin_addr) == 1 else {
            throw MetricsEndpointError(description: "metrics address '\(address)' is not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)")
        }
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw MetricsEndpointError(description: "metrics endpoint: socket(): \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            let why = e == EADDRINUSE ? "the port is already in use (another process listens there; pick another --metrics-port)"
                : e == EACCES ? "permission denied (ports below 1024 need privileges)"
                : e == EADDRNOTAVAIL ? "the address is not one of this machine's" : String(cString: strerror(e))
            throw MetricsEndpointError(description: "cannot serve metrics on \(address):\(port): \(why)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.address = address
        self.port = Int(UInt16(bigEndian: actual.sin_port))
        listener = fd
        pthread_mutex_init(&mutex, nil)
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let created = pthread_create(&t, nil, { arg in
            let endpoint = Unmanaged<MetricsEndpoint>.fromOpaque(arg!).takeRetainedValue()
            endpoint.serve()
            return nil
        }, box.toOpaque())
        guard created == 0 else {
            box.release()
            close(fd)
            throw MetricsEndpointError(description: "metrics endpoint: cannot start its thread (error \(created))")
        }
        thread = t
    }

    deinit {
        pthread_mutex_destroy(&mutex)
    }

    /// Replaces the document served from now on.
    public func publish(_ text: String) {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        document = text
    }

    /// Stops listening and waits for the listener thread (idempotent).
    public func stop() {
        pthread_mutex_lock(&mutex)
        let already = stopping
        stopping = true
        pthread_mutex_unlock(&mutex)
        if already { return }
        if let t = thread { pthread_join(t, nil) }
        close(listener)
    }

    private var isStopping: Bool {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return stopping
    }

    private func serve() {
        while !isStopping {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            answer(client)
            close(client)
        }
    }

    /// Reads the request head (up to 8 KiB, 2 s) and writes the response.
    private func answer(_ fd: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var head = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 2048)
        while head.count < 8192 {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { break }
            head += chunk[0..<n]
            if head.suffix(4) == [13, 10, 13, 10] || head.suffix(2) == [10, 10] { break }
        }
        let line = String(decoding: head.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        let response: String
        if parts.count >= 2, parts[0] == "GET", parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") {
            pthread_mutex_lock(&mutex)
            let body = document
            answered += 1
            pthread_mutex_unlock(&mutex)
            response = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        } else {
            let body = "thor serves its metrics at GET /metrics\n"
            response = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        }
        var bytes = Array(response.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }
            sent += n
        }
    }
}
