import ThorModel
import ThorCluster
import ThorExperts

/// Where a run's routed experts live: this process, or a local cluster of
/// expert-worker processes that this object starts, supervises and stops, or
/// workers started elsewhere.
public final class ExpertRuntime {
    public let backend: ExpertBackend
    /// The worker processes, when this object started them.
    public let cluster: LocalCluster?
    /// The coordinator socket serving externally started workers (`thor worker --connect`).
    public let coordinator: ClusterCoordinator?
    /// Cluster events (fail-over, rejoin, restarts); set before training starts.
    public var onEvent: ((ClusterEvent) -> Void)? {
        didSet {
            remote?.onEvent = onEvent
            cluster?.onEvent = onEvent
        }
    }

    /// Data-parallel coordinators (docs/data-parallel.md, step 3): the followers this run's leader started
    /// (stopped first by `shutdown`).
    public var dataParallel: DataParallelLeader?

    /// The distributed backend (nil for in-process experts).
    public var remote: RemoteExpertBackend? { backend as? RemoteExpertBackend }

    /// How the cluster watches its workers.
    public struct Liveness: Sendable {
        /// Seconds between heartbeats (both ways).
        public var heartbeatInterval = 0.25
        /// Missed heartbeats after which a worker is dead.
        public var heartbeatLiveness = 3
        /// Restarts of a crashing local worker within a minute before it is given up on.
        public var restartBudget = 3
        /// How replicas stay identical.
        public var replication = ReplicationMode.shippedGradients
        public init() {}
    }

    /// `workers` = 0: experts in this process (`threads` of them computed at once);
    /// otherwise starts `workers` `thor worker` processes and places every expert on
    /// `replicas` of them (default: `cluster.replicas`, automatic 2 when there are ≥ 2 workers).
    /// With `cluster.emulate_nodes` the workers run on that many emulated nodes (network
    /// namespaces; `transport` is then tcp over their links) and replicas go to different nodes.
    public init(configuration: ThorConfiguration, workers: Int, threads: Int,
                transport: LocalCluster.Transport = .ipc, placement strategy: Placement.Strategy = .roundRobin,
                binary: String? = nil, replicas: Int? = nil, liveness: Liveness = Liveness(),
                extraWorkerArguments: [String] = []) throws {
        let spec = TranslationModel.expertSpec(for: configuration)
        let keys = TranslationModel.expertKeys(for: configuration)
        coordinator = nil
        if workers == 0 {
            backend = InProcessExpertBackend(spec: spec, keys: keys, threads: threads)
            cluster = nil
        } else {
            let c = try LocalCluster(workers: workers, transport: transport, threadsPerWorker: threads, binary: binary,
                                     extraArguments: extraWorkerArguments,
                                     heartbeatInterval: liveness.heartbeatInterval, heartbeatLiveness: liveness.heartbeatLiveness,
                                     emulatedNodes: configuration.cluster.emulatedNodes)
            c.restartBudget = liveness.restartBudget
            do {
                let r = Self.replicas(replicas, configuration: configuration, workers: workers)
                // Emulated nodes stand for hosts: replicas of an expert go to different nodes where they can.
                let hostnames = c.nodes == nil ? [:]
                    : Dictionary(uniqueKeysWithValues: c.workerIDs.map { ($0, "node\(c.node(of: $0)!)") })
                let placement = try Placement(keys: keys, workers: c.workerIDs, strategy: strategy, replicas: r, hostnames: hostnames)
                let remote = try RemoteExpertBackend(coordinator: c.coordinator, spec: spec, placement: placement)
                remote.replication = liveness.replication
                backend = remote
            } catch {
                c.shutdown()
                throw error
            }
            cluster = c
        }
    }

    /// Binds `endpoint` (e.g. `tcp://0.0.0.0:5555`) and waits up to `timeout` seconds for
    /// `workers` workers started elsewhere with `thor worker --connect …` (several machines).
    /// Workers beyond that number are spares: they take the place of lost ones.
    public init(configuration: ThorConfiguration, externalWorkers workers: Int, bind endpoint: String,
                timeout: Double, placement strategy: Placement.Strategy = .roundRobin,
                replicas: Int? = nil, liveness: Liveness = Liveness(), security: CoordinatorSecurity? = nil,
                onRegistration: ((String) -> Void)? = nil) throws {
        let spec = TranslationModel.expertSpec(for: configuration)
        let keys = TranslationModel.expertKeys(for: configuration)
        let c = try ClusterCoordinator(bind: endpoint, heartbeatInterval: liveness.heartbeatInterval,
                                       heartbeatLiveness: liveness.heartbeatLiveness, security: security)
        if let security { onRegistration?("links are CURVE-encrypted; admitting \(security.allowedKeys.count) worker keys") }
        c.onRefusal = { onRegistration?("refused a worker: \($0)") }
        let keyFlags = security == nil ? "" : " --key NODE.key --server-public-key COORDINATOR.pub"
        onRegistration?("waiting for \(workers) workers at \(c.endpoint) (run `thor worker --connect \(c.endpoint)\(keyFlags)` on each node)")
        try c.waitForWorkers(count: workers, timeout: timeout)
        let ids = Array(c.liveWorkerIDs.filter { c.isAlive($0) }.prefix(workers)).sorted()
        onRegistration?("registered: \(ids.joined(separator: ", "))")
        let hostnames = Dictionary(uniqueKeysWithValues: ids.map { ($0, c.registrations[$0]!.hostname) })
        let r = Self.replicas(replicas, configuration: configuration, workers: workers)
        let placement = try Placement(keys: keys, workers: ids, strategy: strategy, replicas: r, hostnames: hostnames)
        let remote = try RemoteExpertBackend(coordinator: c, spec: spec, placement: placement)
        remote.replication = liveness.replication
        backend = remote
        coordinator = c
        cluster = nil
    }

    static func replicas(_ explicit: Int?, configuration: ThorConfiguration, workers: Int) -> Int {
        var t = configuration.cluster
        t.workers = workers
        if let explicit { t.replicas = explicit }
        return min(max(1, t.effectiveReplicas), workers)
    }

    /// Stops the worker processes (if any; external workers are sent Shutdown). Also done on deinit.
    public func shutdown() {
        dataParallel?.shutdown(reason: "training finished")
        cluster?.shutdown()
        coordinator?.shutdownWorkers(reason: "training finished")
    }

    deinit { shutdown() }
}
