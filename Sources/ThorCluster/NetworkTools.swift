#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What went wrong while setting up or changing emulated nodes' network.
public enum NetworkSetupError: Error, CustomStringConvertible, Equatable {
    /// This process may not create network namespaces (not root, no CAP_NET_ADMIN / CAP_SYS_ADMIN).
    case notPermitted(String)
    /// A command-line tool (`ip`, `tc`, `iptables`) is not installed.
    case toolMissing(String)
    /// A command failed: its command line, exit status and stderr.
    case commandFailed(command: String, status: String, stderr: String)
    /// A request that cannot work (a node that does not exist, a bad rate or probability).
    case invalid(String)

    public var description: String {
        switch self {
        case .notPermitted(let m), .toolMissing(let m), .invalid(let m): return m
        case .commandFailed(let c, let s, let e):
            let text = e.split(separator: "\n").map { $0.trimmingSpaces }.filter { !$0.isEmpty }.joined(separator: " | ")
            return "`\(c)` failed (\(s))" + (text.isEmpty ? "" : ": \(text)")
        }
    }
}

private extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

/// The privileged network tools emulated nodes run as subprocesses (`ip` from iproute2,
/// `tc`, `iptables`), found on `$PATH` and then in the usual sbin directories.
public struct NetworkTools: Sendable {
    /// Directories searched, in order.
    public var searchPath: [String]

    /// `$PATH`, then /usr/sbin, /sbin, /usr/bin, /bin.
    public init() {
        let path = getenv("PATH").map { String(cString: $0) } ?? ""
        var dirs = path.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where !dirs.contains(d) { dirs.append(d) }
        searchPath = dirs
    }

    /// Only these directories (a test simulates a missing tool with an empty one).
    public init(searchPath: [String]) { self.searchPath = searchPath }

    /// The executable `name`, or nil.
    public func locate(_ name: String) -> String? {
        for d in searchPath {
            let p = d.hasSuffix("/") ? d + name : d + "/" + name
            if access(p, X_OK) == 0 { return p }
        }
        return nil
    }

    /// The executable `name`, or an error naming the package to install.
    public func require(_ name: String, package: String, purpose: String) throws -> String {
        guard let p = locate(name) else {
            throw NetworkSetupError.toolMissing(
                "\(purpose) needs `\(name)` (Debian package \(package)), which is not in \(searchPath.joined(separator: ":")); "
                + "install it (scripts/install-deps.sh does) or run without it")
        }
        return p
    }

    /// Throws unless this process may create network namespaces and veth links: root, or
    /// CAP_NET_ADMIN and CAP_SYS_ADMIN in its effective set (`ip netns add` mounts a namespace).
    public static func checkPrivilege(purpose: String) throws {
        let needed: [(bit: Int, name: String)] = [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")]
        let effective = effectiveCapabilities()
        let missing = needed.filter { capability in
            guard let mask = effective else { return geteuid() != 0 }
            return (mask >> UInt64(capability.bit)) & 1 == 0
        }.map(\.name)
        guard missing.isEmpty else {
            throw NetworkSetupError.notPermitted(
                "\(purpose) creates network namespaces and veth links, which needs root or \(needed.map(\.name).joined(separator: " and ")); "
                + "this process (uid \(geteuid())) lacks \(missing.joined(separator: " and ")). Run it as root (e.g. sudo) or without --emulate-nodes")
        }
    }

    /// The effective capability mask from /proc/self/status (nil when unreadable).
    static func effectiveCapabilities() -> UInt64? {
        guard let text = readSmallFile("/proc/self/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(line.dropFirst("CapEff:".count).trimmingSpaces, radix: 16)
        }
        return nil
    }

    /// Runs `tool args…` to completion; returns its stdout. Throws `commandFailed` with the
    /// command line, the exit status and stderr when it does not exit 0.
    @discardableResult
    public static func run(_ tool: String, _ args: [String]) throws -> String {
        let commandLine = ([tool.split(separator: "/").last.map(String.init) ?? tool] + args).joined(separator: " ")
        var out: [Int32] = [0, 0], err: [Int32] = [0, 0]
        guard pipe(&out) == 0 else { throw NetworkSetupError.commandFailed(command: commandLine, status: "pipe failed", stderr: "") }
        guard pipe(&err) == 0 else {
            close(out[0]); close(out[1])
            throw NetworkSetupError.commandFailed(command: commandLine, status: "pipe failed", stderr: "")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, err[1], 2)
        for fd in [out[0], out[1], err[0], err[1]] { posix_spawn_file_actions_addclose(&actions, fd) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), defaults = sigset_t()
        sigemptyset(&empty)
        sigfillset(&defaults)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([tool] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, tool, &actions, &attr, argv, environ)
        close(out[1]); close(err[1])
        guard rc == 0 else {
            close(out[0]); close(err[0])
            throw NetworkSetupError.commandFailed(command: commandLine, status: "could not start: \(String(cString: strerror(rc)))", stderr: "")
        }
        let (stdout, stderr) = drain(out[0], err[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else {
            throw NetworkSetupError.commandFailed(command: commandLine, status: LocalCluster.describe(status: status), stderr: stderr)
        }
        return stdout
    }

    /// Reads both pipes to end of file (poll, so neither can fill up and block the child).
    private static func drain(_ a: Int32, _ b: Int32) -> (String, String) {
        var data: [[UInt8]] = [[], []]
        var fds = [pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0)]
        var open = 2
        var buffer = [UInt8](repeating: 0, count: 4096)
        while open > 0 {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { break } }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &buffer, buffer.count)
                if n > 0 { data[i] += buffer[0..<n] } else if n == 0 || errno != EINTR {
                    close(fds[i].fd)
                    fds[i].fd = -1
                    open -= 1
                }
            }
        }
        for f in fds where f.fd >= 0 { close(f.fd) }
        return (String(decoding: data[0], as: UTF8.self), String(decoding: data[1], as: UTF8.self))
    }
}

/// The text of a small file (nil when unreadable).
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
