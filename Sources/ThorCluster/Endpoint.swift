/// Checks of ZeroMQ endpoint strings before they reach libzmq, which would accept
/// some impossible ones silently (a `connect` to `tcp://256.1.1.1:99999` just never connects).
public enum Endpoint {
    /// Throws ``EndpointError`` naming what is wrong with `endpoint`:
    /// `tcp://HOST:PORT` (an IPv4 address has four parts 0…255; a port is 1…65535, or `*`
    /// when `binding`) or `ipc://PATH` (non-empty, at most 107 bytes: the socket-path limit).
    public static func validate(_ endpoint: String, binding: Bool = false) throws {
        func bad(_ why: String) -> EndpointError { EndpointError(endpoint: endpoint, reason: why) }
        if endpoint.hasPrefix("ipc://") {
            let path = endpoint.dropFirst("ipc://".count)
            guard !path.isEmpty else { throw bad("the ipc path is empty") }
            guard path.utf8.count <= 107 else { throw bad("the ipc path is \(path.utf8.count) bytes; the limit is 107") }
            return
        }
        guard endpoint.hasPrefix("tcp://") else { throw bad("must be tcp://HOST:PORT or ipc://PATH") }
        let rest = endpoint.dropFirst("tcp://".count)
        guard let colon = rest.lastIndex(of: ":") else { throw bad("no port (tcp://HOST:PORT)") }
        var host = rest[..<colon]
        let port = rest[rest.index(after: colon)...]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }  // [IPv6]
        guard !host.isEmpty else { throw bad("the host is empty") }
        if port == "*" {
            guard binding else { throw bad("port * (any free port) is only for binding; give the coordinator's port") }
        } else {
            guard let p = Int(port), (1...65535).contains(p) else { throw bad("port '\(port)' is not a number in 1…65535") }
        }
        if host != "*", host.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
            let parts = host.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4, parts.allSatisfy({ !$0.isEmpty && $0.count <= 3 && Int($0)! <= 255 }) else {
                throw bad("'\(host)' is not an IPv4 address (four numbers 0…255)")
            }
        }
    }
}

/// An endpoint string that cannot work, and why.
public struct EndpointError: Error, CustomStringConvertible, Equatable {
    public var endpoint: String
    public var reason: String
    public var description: String { "invalid endpoint \(endpoint): \(reason)" }
}
