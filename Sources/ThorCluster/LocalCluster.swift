import ThorTensor
import ThorWire
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A coordinator plus W `thor worker` processes on this machine, over ipc or
/// loopback tcp, or on emulated nodes (network namespaces joined by veth links, tcp over
/// them; see `EmulatedNodes`). Everything is torn down by `shutdown()`, deinit, or when
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
    /// Process ids of the workers, in `workerIDs` order (0 once reaped and not restarted).
    public private(set) var processIDs: [pid_t]
    /// The `thor` executable the workers run.
    public let binary: String
    /// Restart a worker whose process exits (a new incarnation that rejoins and receives
    /// state), at most `restartBudget` times per worker within `restartWindow` seconds;
    /// beyond that the worker is given up on with a clear message.
    public var supervise = true
    public var restartBudget = 3
    public var restartWindow = 60.0
    /// Restart and give-up events.
    public var onEvent: ((ClusterEvent) -> Void)?
    /// Workers given up on (too many exits), with the message.
    public private(set) var givenUp: [String: String] = [:]
    private var restarts: [String: [Double]] = [:]
    private var stderrTails: [StderrTail?]
    private var temporaryDirectory: String?
    private var isShutDown = false
    private var processGroup: pid_t = 0
    private let command: (String) -> (path: String, arguments: [String])
    /// The emulated nodes the workers run on (nil: this network namespace). Removed by `shutdown()`.
    public let nodes: EmulatedNodes?
    /// Partitions and packet drop on the emulated nodes' links (nil without emulated nodes).
    public let links: LinkControl?
    /// The emulated node of each worker, in `workerIDs` order (empty without emulated nodes).
    public let workerNodes: [Int]

    /// Starts `workers` worker processes and waits until all registered and answer.
    /// - Parameters:
    ///   - binary: the `thor` executable; default `LocalCluster.locateThorBinary()`.
    ///   - extraArguments: appended to every `thor worker` command line.
    ///   - emulatedNodes: run the workers in that many network namespaces (contiguous groups:
    ///     w0… on node 0), over tcp on veth links to this process; `transport` is then ignored.
    ///     Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`; refused clearly otherwise.
    public init(workers: Int, transport: Transport = .ipc, threadsPerWorker: Int = 1,
                binary: String? = nil, registrationTimeout: Double = 60,
                extraArguments: [String] = [], heartbeatInterval: Double = 0.25, heartbeatLiveness: Int = 3,
                emulatedNodes: EmulatedNodes.Options? = nil) throws {
        guard workers >= 1 else { throw ClusterError.launch("need at least one worker, got \(workers)") }
        self.binary = try binary ?? LocalCluster.locateThorBinary()
        guard access(self.binary, X_OK) == 0 else { throw ClusterError.launch("\(self.binary) is not an executable") }
        var endpoint: String
        var tmp: String? = nil
        var nodes: EmulatedNodes? = nil
        if let options = emulatedNodes {
            guard options.nodes <= workers else {
                throw ClusterError.launch("\(options.nodes) emulated nodes need at least as many workers, got \(workers)")
            }
            nodes = try EmulatedNodes(options)
            endpoint = "tcp://\(nodes!.coordinatorAddress):*"
        } else {
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
        }
        do {
            coordinator = try ClusterCoordinator(bind: endpoint, heartbeatInterval: heartbeatInterval, heartbeatLiveness: heartbeatLiveness)
        } catch {
            if let tmp { rmdir(tmp) }
            nodes?.remove()
            throw error
        }
        temporaryDirectory = tmp
        // Emulated nodes stand for other machines: their tensors must cross the emulated links, not shared memory.
        if emulatedNodes != nil { coordinator.sharedLinks.enabled = false }
        self.nodes = nodes
        links = nodes.map { LinkControl($0) }
        workerIDs = (0..<workers).map { "w\($0)" }
        workerNodes = nodes == nil ? [] : (0..<workers).map { EmulatedNodes.node(ofWorker: $0, workers: workers, nodes: nodes!.options.nodes) }
        processIDs = []
        stderrTails = []
        let connect = coordinator.endpoint
        let binary = self.binary
        let ids = workerIDs, placedOn = workerNodes
        command = { id in
            let args = ["worker", "--connect", connect, "--id", id, "--threads", String(threadsPerWorker), "--parent-pid", String(getpid()),
                        "--heartbeat-interval", String(heartbeatInterval), "--heartbeat-liveness", String(heartbeatLiveness)] + extraArguments
            guard let nodes, let i = ids.firstIndex(of: id) else { return (binary, args) }
            return nodes.command(node: placedOn[i], binary, args)
        }
        do {
            for id in workerIDs {
                let (path, arguments) = command(id)
                let (pid, tail) = try LocalCluster.spawnCapturing(path, arguments, processGroup: processGroup)
                if processGroup == 0 { processGroup = pid }
                processIDs.append(pid)
                stderrTails.append(tail)
            }
            coordinator.childWatch = { [unowned self] in self.reapExited() }
            try coordinator.waitForWorkers(count: workers, timeout: registrationTimeout) {
                if let (w, m) = givenUp.first { throw ClusterError.launch("worker \(w) \(m)") }
            }
        } catch {
            shutdown()
            throw error
        }
    }

    deinit { shutdown() }

    /// Throws when a worker process has exited (named, with its status and last stderr lines).
    public func checkChildren() throws {
        if let (w, reason) = reapExited().first { throw ClusterError.launch("worker \(w) \(reason)") }
    }

    /// Reaps every worker process that exited, returning (worker, why: exit status or
    /// signal, and its last stderr lines), and restarts it when supervising within budget.
    public func reapExited() -> [(worker: String, reason: String)] {
        var result: [(worker: String, reason: String)] = []
        for (i, pid) in processIDs.enumerated() where pid > 0 {
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { continue }
            processIDs[i] = 0
            let id = workerIDs[i]
            var reason = "(pid \(pid)) exited: \(LocalCluster.describe(status: status))"
            if let lines = stderrTails[i]?.lines(waitingForEOF: 0.2), !lines.isEmpty {
                reason += "; last stderr: " + lines.suffix(5).joined(separator: " | ")
            }
            result.append((id, reason))
            if supervise && !isShutDown { restart(i, after: reason) }
        }
        return result
    }

    /// Starts a new incarnation of worker `i` unless its restart budget is spent.
    private func restart(_ i: Int, after reason: String) {
        let id = workerIDs[i]
        let now = monotonicSeconds()
        var recent = restarts[id, default: []].filter { now - $0 < restartWindow }
        guard recent.count < restartBudget else {
            let m = "exited \(recent.count + 1) times within \(decimal(restartWindow, 0)) s (restart budget \(restartBudget)); giving up on it. Last: \(reason)"
            givenUp[id] = m
            onEvent?(ClusterEvent(kind: .gaveUp, step: coordinator.currentStep, worker: id, reason: m))
            return
        }
        recent.append(now)
        restarts[id] = recent
        do {
            let pid: pid_t, tail: StderrTail?
            let (path, arguments) = command(id)
            do {
                (pid, tail) = try LocalCluster.spawnCapturing(path, arguments, processGroup: processGroup)
            } catch where processGroup != 0 {
                // Every member of the group has exited, and an empty group cannot be joined
                // (EPERM): the restarted worker leads a new one.
                (pid, tail) = try LocalCluster.spawnCapturing(path, arguments, processGroup: 0)
                processGroup = pid
            }
            processIDs[i] = pid
            stderrTails[i] = tail
            onEvent?(ClusterEvent(kind: .restarted, step: coordinator.currentStep, worker: id,
                                  reason: "restarted as pid \(pid) (\(recent.count) of \(restartBudget) restarts) after it \(reason)"))
        } catch {
            givenUp[id] = "could not be restarted: \(error)"
        }
    }

    /// The live worker process of `worker` (0 if none).
    public func processID(of worker: String) -> pid_t {
        workerIDs.firstIndex(of: worker).map { processIDs[$0] } ?? 0
    }

    /// The emulated node worker `worker` runs on (nil without emulated nodes).
    public func node(of worker: String) -> Int? {
        workerIDs.firstIndex(of: worker).flatMap { workerNodes.indices.contains($0) ? workerNodes[$0] : nil }
    }

    /// Stops every worker and removes the ipc directory and the emulated nodes (idempotent).
    /// Shutdown request (1 s), then SIGTERM (2 s), then SIGKILL; every child is reaped.
    public func shutdown() {
        if isShutDown { return }
        isShutDown = true
        coordinator.childWatch = nil
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
        nodes?.remove()
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
        try spawn(path, args, processGroup: processGroup, stderrPipe: nil)
    }

    /// Like `spawn`, with the child's stderr going through a pipe: a thread copies it to
    /// this process's stderr and keeps the last lines for the exit message.
    static func spawnCapturing(_ path: String, _ args: [String], processGroup: pid_t) throws -> (pid_t, StderrTail?) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return (try spawn(path, args, processGroup: processGroup, stderrPipe: nil), nil) }
        let pid: pid_t
        do {
            pid = try spawn(path, args, processGroup: processGroup, stderrPipe: (fds[0], fds[1]))
        } catch {
            close(fds[0]); close(fds[1])
            throw error
        }
        close(fds[1])
        return (pid, StderrTail(fd: fds[0]))
    }

    static func spawn(_ path: String, _ args: [String], processGroup: pid_t, stderrPipe: (read: Int32, write: Int32)?) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let p = stderrPipe {
            posix_spawn_file_actions_adddup2(&actions, p.write, 2)
            posix_spawn_file_actions_addclose(&actions, p.read)
            posix_spawn_file_actions_addclose(&actions, p.write)
        }
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
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
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

/// The read end of a child's stderr pipe: a thread copies every byte to our stderr and
/// keeps the last lines (for "worker w1 exited: killed by signal 9; last stderr: …").
final class StderrTail: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var tail: [String] = []
    private var partial: [UInt8] = []
    private var done = false
    private let keep = 20

    init(fd: Int32) {
        pthread_mutex_init(&mutex, nil)
        let reader = startThread { [self] in self.pump(fd) }
        pthread_detach(reader)
    }

    private func pump(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            _ = buffer.withUnsafeBytes { write(2, $0.baseAddress, n) }
            pthread_mutex_lock(&mutex)
            for b in buffer[0..<n] {
                if b == 10 { appendLine() } else { partial.append(b) }
            }
            pthread_mutex_unlock(&mutex)
        }
        close(fd)
        pthread_mutex_lock(&mutex)
        if !partial.isEmpty { appendLine() }
        done = true
        pthread_mutex_unlock(&mutex)
    }

    private func appendLine() {
        tail.append(String(decoding: partial, as: UTF8.self))
        partial.removeAll()
        if tail.count > keep { tail.removeFirst(tail.count - keep) }
    }

    /// The last lines, after waiting up to `seconds` for the pipe to reach end of file.
    func lines(waitingForEOF seconds: Double) -> [String] {
        let end = monotonicSeconds() + seconds
        while true {
            pthread_mutex_lock(&mutex)
            let (t, d) = (tail, done)
            pthread_mutex_unlock(&mutex)
            if d || monotonicSeconds() >= end { return t.filter { !$0.isEmpty } }
            usleep(5_000)
        }
    }
}
