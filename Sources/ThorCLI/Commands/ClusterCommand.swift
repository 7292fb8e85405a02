import ArgumentParser
import ThorCluster
import ThorExperts
import ThorWire
#if canImport(Glibc)
import Glibc
#endif

struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Start a local cluster of a coordinator and expert workers.",
        discussion: """
        Starts W `thor worker` processes on this machine (over ipc or loopback tcp), \
        waits until they registered, prints them, assigns experts, and runs a short \
        smoke exchange: random training steps on the workers and in-process, which \
        must agree bit for bit. With --wait it then keeps the workers up until Ctrl-C.

        With --bind, no workers are started: the coordinator binds that tcp \
        endpoint and waits for --workers external workers, each started on its \
        machine with `thor worker --connect tcp://THIS_HOST:PORT` (see cluster/README.md).

        With --emulate-nodes N, the workers run on N emulated nodes: network namespaces \
        (own TCP/IP stacks) joined to this process by veth links, optionally rate-limited \
        with --link (kernel tbf). Needs root; the namespaces are removed on every exit \
        (docs/emulated-nodes.md).

        Examples:
          thor cluster --workers 3
          thor cluster --workers 2 --transport tcp --placement blocked --steps 5
          thor cluster --bind tcp://0.0.0.0:5555 --workers 4 --wait \\
              --server-key keys/coordinator.key --allowed-keys keys/allowed
          sudo thor cluster --workers 4 --emulate-nodes 2 --link 1gbit

        A --bind address other than loopback needs keys (--server-key, --allowed-keys: \
        links are CURVE-encrypted and only listed workers are admitted) or --insecure.
        """
    )

    @Option(name: .shortAndLong, help: "Number of workers.")
    var workers: Int = 2

    @Option(name: .long, help: "Transport for local workers: ipc or tcp.")
    var transport: String = "ipc"

    @Option(name: .long, help: "Bind this endpoint and wait for external workers instead of starting them.")
    var bind: String?

    @Option(name: .long, help: ArgumentHelp("With --bind: the coordinator's CURVE secret key file (mode 0600).", valueName: "file"))
    var serverKey: String?

    @Option(name: .long, help: ArgumentHelp("With --bind: the workers' public keys, a directory of *.pub files or one file of keys.", valueName: "dir-or-file"))
    var allowedKeys: String?

    @Flag(name: .long, help: "Allow --bind beyond loopback without keys (unencrypted; any machine that reaches the port can join).")
    var insecure = false

    @Option(name: .long, help: ArgumentHelp("Run the workers on N emulated nodes (network namespaces joined by veth links; tcp over them). Needs root.", valueName: "N"))
    var emulateNodes: Int?

    @Option(name: .long, help: ArgumentHelp("Rate limit of each emulated node's link, both ways (kernel tbf), e.g. 1gbit, 100mbit.", valueName: "rate"))
    var link: String?

    @Option(name: .long, help: "Threads per worker.")
    var threads: Int = 1

    @Option(name: .long, help: "Expert placement: round-robin or blocked.")
    var placement: String = "round-robin"

    @Option(name: .long, help: "MoE layers in the smoke exchange.")
    var layers: Int = 2
    @Option(name: .long, help: "Experts per MoE layer in the smoke exchange.")
    var experts: Int = 4
    @Option(name: .long, help: "Model width d of the smoke experts.")
    var modelDim: Int = 16
    @Option(name: .long, help: "Hidden width d_ff of the smoke experts.")
    var hiddenDim: Int = 32
    @Option(name: .long, help: "Training steps in the smoke exchange (0: skip it).")
    var steps: Int = 2

    @Option(name: .long, help: "Seconds to wait for workers to register.")
    var registrationTimeout: Double = 60

    @Flag(name: .long, help: "Keep the cluster up after the smoke exchange until Ctrl-C.")
    var wait = false

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1, got \(workers)") }
        guard LocalCluster.Transport(rawValue: transport) != nil else {
            throw ValidationError("--transport must be ipc or tcp, got \(transport)")
        }
        guard Placement.Strategy(rawValue: placement) != nil else {
            throw ValidationError("--placement must be round-robin or blocked, got \(placement)")
        }
        guard layers >= 1, experts >= 1, modelDim >= 1, hiddenDim >= 1, steps >= 0, threads >= 1 else {
            throw ValidationError("--layers, --experts, --model-dim, --hidden-dim and --threads must be positive, --steps >= 0")
        }
        if let bind { do { try Endpoint.validate(bind, binding: true) } catch { throw ValidationError("--bind: \(error)") } }
        if let emulateNodes {
            guard bind == nil else { throw ValidationError("--emulate-nodes starts local workers; it cannot be combined with --bind") }
            guard (1...workers).contains(emulateNodes) else {
                throw ValidationError("--emulate-nodes must be between 1 and --workers (\(workers)), got \(emulateNodes)")
            }
        }
        if let link {
            guard emulateNodes != nil else { throw ValidationError("--link limits emulated nodes' links; give --emulate-nodes too") }
            do { _ = try LinkRate(parsing: link) } catch { throw ValidationError("--link: \(error)") }
        }
    }

    func run() throws {
        // Ctrl-C / SIGTERM are noticed between steps so the workers are always torn down.
        let signals = TerminationSignals()
        var local: LocalCluster? = nil
        let coordinator: ClusterCoordinator
        let security = try CoordinatorKeyOptions.security(bind: bind, serverKey: serverKey, allowedKeys: allowedKeys, insecure: insecure)
        if let bind {
            coordinator = try ClusterCoordinator(bind: bind, security: security)
            if let security { print("links are CURVE-encrypted; admitting \(security.allowedKeys.count) worker keys") }
            print("coordinator listening on \(coordinator.endpoint); waiting for \(workers) workers")
            coordinator.onRegistration = { r in print("  registered \(r.workerID) (\(r.hostname), pid \(r.pid), \(r.threads) threads)") }
            try coordinator.waitForWorkers(count: workers, timeout: registrationTimeout) {
                if let s = signals.received { throw ExitCode(128 + s) }
            }
        } else {
            let nodes = try emulateNodes.map { EmulatedNodes.Options(nodes: $0, linkRate: try link.map { try LinkRate(parsing: $0) }) }
            let cluster = try LocalCluster(workers: workers, transport: LocalCluster.Transport(rawValue: transport)!,
                                           threadsPerWorker: threads, registrationTimeout: registrationTimeout, emulatedNodes: nodes)
            local = cluster
            coordinator = cluster.coordinator
            print("coordinator on \(coordinator.endpoint) with \(workers) local workers (\(cluster.binary))")
            if let n = cluster.nodes {
                if !n.removedStale.isEmpty { print("removed what killed runs left: \(n.removedStale.joined(separator: ", "))") }
                print("emulated nodes (links \(n.options.linkRate.map { "limited to \($0)" } ?? "unlimited"), bridge \(n.bridge)):")
                for k in n.namespaces.indices {
                    print("  node\(k): namespace \(n.namespaces[k]), \(n.nodeAddresses[k]) via \(n.hostInterfaces[k])")
                }
            }
            for (id, pid) in zip(cluster.workerIDs, cluster.processIDs) {
                let r = coordinator.registrations[id]!
                let on = cluster.node(of: id).map { ", node\($0)" } ?? ""
                print("  registered \(id) (pid \(pid), \(r.threads) threads, incarnation \(String(r.incarnation, radix: 16))\(on))")
            }
        }
        defer {
            if let local { local.shutdown() } else { coordinator.shutdownWorkers(reason: "thor cluster exiting") }
        }

        let spec = ExpertSpec(modelDim: modelDim, hiddenDim: hiddenDim, activation: .gelu, seed: 1)
        let keys = Placement.allKeys(layers: layers, experts: experts)
        let place = try Placement(keys: keys, workers: local?.workerIDs ?? coordinator.workerIDs.sorted(), strategy: Placement.Strategy(rawValue: placement)!)
        print("placement (\(placement)):\n" + place.description.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        let remote = try RemoteExpertBackend(coordinator: coordinator, spec: spec, placement: place)
        if steps > 0 {
            let reference = InProcessExpertBackend(spec: spec, keys: keys)
            let report = try BackendComparison(layers: layers, experts: experts).run(remote, reference, steps: steps)
            let c = remote.counters
            print("smoke exchange: \(report)")
            print("  \(c.requests) requests, \(c.bytesSent) bytes sent, \(c.bytesReceived) received; encode \(ms(c.encodeSeconds)), wait \(ms(c.waitSeconds)), decode \(ms(c.decodeSeconds))")
            if !report.identical { throw ExitCode(1) }
        }
        if wait {
            print("cluster is up; Ctrl-C to stop")
            while signals.received == nil {
                usleep(100_000)
                if let local { try local.checkChildren() }
            }
            print("stopping")
        }
    }

    private func ms(_ s: Double) -> String { String(Int((s * 1e6).rounded())) + " µs" }
}
