import ArgumentParser
import Foundation
import ThorCluster
import ThorWire
#if canImport(Glibc)
import Glibc
#endif

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run an expert worker that hosts routed experts.",
        discussion: """
        The worker connects (ZeroMQ DEALER) to a coordinator's ROUTER endpoint, \
        registers, receives its expert assignment, and serves forward, backward, \
        gradient-norm, optimizer-step, export/import and heartbeat requests until \
        it is told to shut down. A malformed, oversized or wrong-version frame gets \
        an Error reply naming the problem and changes nothing.

        It sends a liveness beat every --heartbeat-interval, also while computing \
        (a busy worker is alive, a silent one is dead), on its data connection and on \
        a second connection that carries only beats (so that a beat never waits behind \
        a large reply crossing the data connection). When its coordinator goes \
        away it keeps its experts and re-registers with whichever coordinator session \
        answers at the endpoint. It exits on Shutdown, on SIGTERM/SIGINT, when \
        --parent-pid is given and that process is gone, after being disconnected \
        from the coordinator for --orphan-timeout seconds (exit status 3), or when \
        the coordinator refuses it, e.g. for a duplicate --id (exit status 4).

        Examples:
          thor worker --connect tcp://10.0.0.1:5555 --id gpu-box-1 --threads 2
          thor worker --connect ipc:///tmp/thor/coordinator.sock
          thor worker --connect tcp://10.0.0.1:5555 --key keys/node-2.key --server-public-key keys/coordinator.pub

        With --key and --server-public-key the link is CURVE-encrypted and the \
        coordinator admits the worker only if its public key is allowed; a refused key \
        ends the worker with exit status 4 and a message naming the cause.
        """
    )

    @Option(name: .long, help: "Coordinator endpoint: tcp://HOST:PORT or ipc://PATH.")
    var connect: String

    @Option(name: .long, parsing: .singleValue,
            help: ArgumentHelp("A follower coordinator of a data-parallel run (docs/data-parallel.md), in rank order 1, 2, …; repeatable. --connect is then the leader's. Only Forward, Backward, Export and Heartbeat are served over these links.", valueName: "endpoint"))
    var coordinator: [String] = []

    @Option(name: .long, help: "Worker id, unique in the cluster (default: HOSTNAME-PID).")
    var id: String?

    @Option(name: .long, help: "Expert tasks (row chunks, gradient tiles) of one request computed concurrently (one BLAS thread each; results do not depend on it).")
    var threads: Int = 1

    @Option(name: .long, help: "Exit when this process is no longer the parent (set by launchers).")
    var parentPid: Int32?

    @Option(name: .long, help: "Exit after this many seconds disconnected from the coordinator (0: never).")
    var orphanTimeout: Double = 30

    @Option(name: .long, help: "Seconds between liveness beats to the coordinator (sent also while computing).")
    var heartbeatInterval: Double = 0.25

    @Option(name: .long, help: "Missed beats after which the coordinator connection counts as dead.")
    var heartbeatLiveness: Int = 3

    @Option(name: .long, help: "Largest frame accepted; larger ones get a TOO_LARGE Error reply.")
    var maxFrameBytes: Int = WireCodec.defaultMaxFrameBytes

    @Option(name: .long, help: "Memory budget in bytes for experts and request activations; larger requests get a TOO_LARGE Error reply (default: physical memory).")
    var memoryBudget: Int?

    @Option(name: .long, help: "Largest tensor in elements, received or built; larger ones get a TOO_LARGE Error reply.")
    var maxTensorElements: Int = Int(Int32.max)

    @Option(name: .long, help: ArgumentHelp("This worker's CURVE secret key file (from `thor keys generate`; mode 0600).", valueName: "file"))
    var key: String?

    @Option(name: .long, help: ArgumentHelp("The coordinator's CURVE public key file (its PREFIX.pub).", valueName: "file"))
    var serverPublicKey: String?

    @Flag(name: .long, help: "Log connection events and assignments to stderr.")
    var verbose = false

    @Flag(name: .long, help: "Send tensors as ZeroMQ frames only: offer no shared-memory region to a coordinator on this host (as THOR_SHARED_MEMORY=0).")
    var noSharedMemory = false

    func validate() throws {
        do { try Endpoint.validate(connect) } catch { throw ValidationError("--connect: \(error)") }
        for e in coordinator {
            do { try Endpoint.validate(e) } catch { throw ValidationError("--coordinator: \(error)") }
        }
        guard Set(coordinator + [connect]).count == coordinator.count + 1 else {
            throw ValidationError("--connect and every --coordinator must be different endpoints")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
        guard orphanTimeout >= 0 else { throw ValidationError("--orphan-timeout must be >= 0, got \(orphanTimeout)") }
        if let m = memoryBudget { guard m > 0 else { throw ValidationError("--memory-budget must be positive, got \(m)") } }
        guard maxTensorElements > 0 else { throw ValidationError("--max-tensor-elements must be positive, got \(maxTensorElements)") }
        guard heartbeatInterval > 0, heartbeatInterval.isFinite else {
            throw ValidationError("--heartbeat-interval must be a positive number of seconds, got \(heartbeatInterval)")
        }
        guard heartbeatLiveness >= 1 else { throw ValidationError("--heartbeat-liveness must be at least 1, got \(heartbeatLiveness)") }
        guard maxFrameBytes > 0 else { throw ValidationError("--max-frame-bytes must be positive, got \(maxFrameBytes)") }
        if let id { guard !id.isEmpty, id.utf8.count <= 255 else { throw ValidationError("--id must be 1…255 bytes") } }
        guard (key == nil) == (serverPublicKey == nil) else {
            throw ValidationError("--key and --server-public-key go together: this worker's secret key and the coordinator's public key")
        }
    }

    func run() throws {
        let signals = TerminationSignals()
        var options = WorkerOptions(endpoint: connect, workerID: id ?? WorkerCommand.defaultID())
        options.followerEndpoints = coordinator
        options.threads = threads
        options.parentPID = parentPid
        options.orphanTimeout = orphanTimeout
        options.maxFrameBytes = maxFrameBytes
        options.verbose = verbose
        if noSharedMemory { options.sharedMemory = false }
        options.limits = WorkerLimits(memoryBudgetBytes: memoryBudget ?? WorkerLimits.physicalMemoryBytes(),
                                      maxTensorElements: maxTensorElements)
        options.heartbeatInterval = heartbeatInterval
        options.heartbeatLiveness = heartbeatLiveness
        if let key, let serverPublicKey { options.security = try WorkerSecurity.load(key: key, serverPublicKey: serverPublicKey) }
        let worker = ExpertWorker(options: options)
        let exit = try worker.run(signals: signals)
        // Our coordinator was killed before it could clean up: remove its ipc socket directory.
        if exit == .parentGone { SocketDirectory.removeAbandoned(endpoint: connect) }
        switch exit {
        case .orphaned, .neverConnected:
            // A coordinator with another key drops our CURVE hello without a word.
            let hint = options.security != nil && exit != .orphaned(seconds: orphanTimeout)
                ? " With keys, also check that --server-public-key is the coordinator's public key." : ""
            FileHandle.standardError.write(Data("thor worker \(options.workerID): \(exit)\(hint)\n".utf8))
            throw ExitCode(3)
        case .refused:
            FileHandle.standardError.write(Data("thor worker \(options.workerID): \(exit)\n".utf8))
            throw ExitCode(4)
        default:
            if verbose { FileHandle.standardError.write(Data("thor worker \(options.workerID): \(exit)\n".utf8)) }
        }
    }

    static func defaultID() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let host = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return "\(host)-\(getpid())"
    }
}
