#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The private directory holding a local cluster's ipc socket
/// (`$TMPDIR/thor-cluster-XXXXXX/coordinator.sock`, TMPDIR defaulting to /tmp).
///
/// The coordinator removes it on every exit it sees (`LocalCluster.shutdown`, deinit,
/// a failed start). When the coordinator is killed outright its workers notice that
/// their parent is gone and remove it instead (`removeAbandoned`).
public enum SocketDirectory {
    static let prefix = "thor-cluster-"
    static let socketName = "coordinator.sock"

    /// Creates a fresh private directory; returns its path.
    static func create() -> String? {
        var base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        if base.isEmpty { base = "/tmp" }
        while base.count > 1 && base.hasSuffix("/") { base.removeLast() }
        var template = Array("\(base)/\(prefix)XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { return nil }
        return String(cString: dir)
    }

    /// The endpoint of the socket in `directory`.
    static func endpoint(in directory: String) -> String { "ipc://\(directory)/\(socketName)" }

    /// Removes the socket file and its directory when `endpoint` is a local cluster's
    /// (`ipc://…/thor-cluster-XXXXXX/coordinator.sock`); anything else is left alone.
    /// The directory goes only once empty, so several workers may call this at once.
    public static func removeAbandoned(endpoint: String) {
        guard endpoint.hasPrefix("ipc://") else { return }
        let path = String(endpoint.dropFirst("ipc://".count))
        guard path.hasSuffix("/" + socketName) else { return }
        let dir = String(path.dropLast(socketName.count + 1))
        guard let name = dir.split(separator: "/").last, name.hasPrefix(prefix) else { return }
        unlink(path)
        rmdir(dir)
    }
}
