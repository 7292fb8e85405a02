import ThorTensor
import ThorWire
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A coordinator plus W `thor worker` processes on this machine, over ipc or
/// loopback tcp. Everything is torn down by `shutdown()`, deinit, or when
/// `init` fails halfway: Shutdown request, then SIGTERM, then SIGKILL to the
/// workers' process group, and `waitpid` on each — no orphans, no zombies.
/// Workers also exit on their own within a poll interval if this process dies
/// (they watch their parent pid).
public final class LocalCluster {
    public enum Transport: String, Sendable, CaseIterable {
        /// A unix socket in a fresh temporary directory.
        case ipc
        /// tcp on 127.0.0.1, ephemeral port.
        case tcp
    }

    public let coordinator: ClusterCoordinator
    /// Worker ids (`w0`, `w1`, …) in spawn order.
    public let workerIDs: [String]
    /// Process ids of the workers, in `workerIDs` order (0 once reaped).
    public private(set) var processIDs: [pid_t]
    /// The `thor` executable the workers run.
    public let binary: String
    private var temporaryDirectory: String?
    private var isShutDown = false
    private var processGroup: pid_t = 0

    /// Starts `workers` worker processes and waits until all registered.
    /// - Parameters:
    ///   - binary: the `thor` executable; default `LocalCluster.locateThorBinary()`.
    ///   - extraArguments: appended to every `thor worker` command line.
    public init(workers: Int, transport: Transport = .ipc, threadsPerWorker: Int = 1,
                binary: String? = nil, registrationTimeout: Double = 60,
                extraArguments: [String] = []) throws {
        guard workers >= 1 else { throw ClusterError.launch("need at least one worker, got \(workers)") }
        self.binary = try binary ?? LocalCluster.locateThorBinary()
        guard access(self.binary, X_OK) == 0 else { throw ClusterError.launch("\(self.binary) is not an executable") }
        var endpoint: String
        var tmp: String? = nil
        switch transport {
        case .ipc:
            guard let dir = SocketDirectory.create() else {
                throw ClusterError.launch("cannot create a temporary directory for the ipc socket")
            }
            tmp = dir
            endpoint = SocketDirectory.endpoint(in: dir)
        case .tcp:
            endpoint = "tcp://127.0.0.1:*"
        }
        do {
            coordinator = try ClusterCoordinator(bind: endpoint)
        } catch {
            if let tmp { rmdir(tmp) }
            throw error
        }
        temporaryDirectory = tmp
        workerIDs = (0..<workers).map { "w\($0)" }
        processIDs = []
        do {
            var group: pid_t = 0
            for id in workerIDs {
                let args = ["worker", "--connect", coordinator.endpoint, "--id", id,
                            "--threads", String(threadsPerWorker), "--parent-pid", String(getpid())] + extraArguments
                let pid = try LocalCluster.spawn(self.binary, args, processGroup: group)
                if group == 0 { group = pid; processGroup = pid }
                processIDs.append(pid)
            }
            try coordinator.waitForWorkers(count: workers, timeout: registrationTimeout) { try checkChildren() }
        } catch {
            shutdown()
            throw error
        }
    }

    deinit { shutdown() }

    /// Throws when a worker process has exited (named, with its status).
    public func checkChildren() throws {
        for (i, pid) in processIDs.enumerated() where pid > 0 {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                processIDs[i] = 0
                throw ClusterError.launch("worker \(workerIDs[i]) (pid \(pid)) exited: \(LocalCluster.describe(status: status))")
            }
        }
    }

    /// Stops every worker and removes the ipc directory (idempotent).
    /// Shutdown request (1 s), then SIGTERM (2 s), then SIGKILL; every child is reaped.
    public func shutdown() {
        if isShutDown { return }
        isShutDown = true
        coordinator.shutdownWorkers(reason: "cluster shutting down", timeout: 1)
        reap(within: 1)
        signalAll(SIGTERM)
        reap(within: 2)
        signalAll(SIGKILL)
        for (i, pid) in processIDs.enumerated() where pid > 0 {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            processIDs[i] = 0
        }
        if let tmp = temporaryDirectory {
            unlink("\(tmp)/coordinator.sock")
            rmdir(tmp)
            temporaryDirectory = nil
        }
    }

    /// Signals every live worker and the workers' process group.
    private func signalAll(_ signal: Int32) {
        if processGroup > 0, processIDs.contains(where: { $0 > 0 }) { kill(-processGroup, signal) }
        for pid in processIDs where pid > 0 { kill(pid, signal) }
    }

    private func reap(within seconds: Double) {
        let deadline = monotonicSeconds() + seconds
        while processIDs.contains(where: { $0 > 0 }) {
            for (i, pid) in processIDs.enumerated() where pid > 0 {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { processIDs[i] = 0 }
            }
            if monotonicSeconds() >= deadline { return }
            usleep(10_000)
        }
    }

    static func describe(status: Int32) -> String {
        if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
        return "killed by signal \(status & 0x7f)"
    }

    /// Starts `path args…` in process group `processGroup` (0: a new group led by the child),
    /// with default SIGTERM/SIGINT handling and an empty signal mask.
    public static func spawn(_ path: String, _ args: [String], processGroup: pid_t = 0) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), defaults = sigset_t()
        sigemptyset(&empty)
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGTERM)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, processGroup)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let envp = environmentStrings()
        defer { for e in envp { free(e) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, nil, &attr, argv, envp)
        guard rc == 0 else {
            throw ClusterError.launch("posix_spawn \(path): \(String(cString: strerror(rc)))")
        }
        return pid
    }

    /// The `thor` executable: `$THOR_BINARY`, else `thor` next to the running
    /// executable (also right for test bundles in `.build/<config>/`).
    public static func locateThorBinary() throws -> String {
        if let env = getenv("THOR_BINARY") {
            let path = String(cString: env)
            guard access(path, X_OK) == 0 else { throw ClusterError.launch("THOR_BINARY=\(path) is not an executable") }
            return path
        }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw ClusterError.launch("cannot read /proc/self/exe; set THOR_BINARY") }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let candidate = dir + "/thor"
        guard access(candidate, X_OK) == 0 else {
            throw ClusterError.launch("no thor executable at \(candidate) (build it with `swift build -c release --product thor`, or set THOR_BINARY)")
        }
        return candidate
    }
}

/// The process environment (from /proc/self/environ) as strdup'ed C strings, nil-terminated,
/// with `OPENBLAS_CORETYPE` set to the kernels this process loaded, so that workers compute
/// the same bits as their parent (and `thor` does not re-pick them).
private func environmentStrings() -> [UnsafeMutablePointer<CChar>?] {
    var result: [UnsafeMutablePointer<CChar>?] = []
    let fd = open("/proc/self/environ", O_RDONLY)
    if fd >= 0 {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        close(fd)
        for entry in bytes.split(separator: 0) where !entry.isEmpty {
            let text = String(decoding: entry, as: UTF8.self)
            if text.hasPrefix(BLASCore.environmentVariable + "=") { continue }
            result.append(strdup(text))
        }
    }
    result.append(strdup("\(BLASCore.environmentVariable)=\(BLASCore.loaded)"))
    return result + [nil]
}
