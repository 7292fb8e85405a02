import ThorModel
import ThorCluster
import ThorExperts

/// Where a run's routed experts live: this process, or a local cluster of
/// expert-worker processes that this object starts and stops.
public final class ExpertRuntime {
    public let backend: ExpertBackend
    /// The worker processes, when this object started them.
    public let cluster: LocalCluster?
    /// The coordinator socket serving externally started workers (`thor worker --connect`).
    public let coordinator: ClusterCoordinator?

    /// `workers` = 0: experts in this process (`threads` of them computed at once);
    /// otherwise starts `workers` `thor worker` processes and places the experts on them.
    public init(configuration: ThorConfiguration, workers: Int, threads: Int,
                transport: LocalCluster.Transport = .ipc, placement strategy: Placement.Strategy = .roundRobin,
                binary: String? = nil) throws {
        let spec = TranslationModel.expertSpec(for: configuration)
        let keys = TranslationModel.expertKeys(for: configuration)
        coordinator = nil
        if workers == 0 {
            backend = InProcessExpertBackend(spec: spec, keys: keys, threads: threads)
            cluster = nil
        } else {
            let c = try LocalCluster(workers: workers, transport: transport, threadsPerWorker: threads, binary: binary)
            do {
                let placement = try Placement(keys: keys, workers: c.workerIDs, strategy: strategy)
                backend = try RemoteExpertBackend(coordinator: c.coordinator, spec: spec, placement: placement)
            } catch {
                c.shutdown()
                throw error
            }
            cluster = c
        }
    }

    /// Binds `endpoint` (e.g. `tcp://0.0.0.0:5555`) and waits up to `timeout` seconds for
    /// `workers` workers started elsewhere with `thor worker --connect …` (several machines).
    public init(configuration: ThorConfiguration, externalWorkers workers: Int, bind endpoint: String,
                timeout: Double, placement strategy: Placement.Strategy = .roundRobin,
                onRegistration: ((String) -> Void)? = nil) throws {
        let spec = TranslationModel.expertSpec(for: configuration)
        let keys = TranslationModel.expertKeys(for: configuration)
        let c = try ClusterCoordinator(bind: endpoint)
        onRegistration?("waiting for \(workers) workers at \(c.endpoint) (run `thor worker --connect \(c.endpoint)` on each node)")
        try c.waitForWorkers(count: workers, timeout: timeout)
        let ids = Array(c.workerIDs.prefix(workers)).sorted()
        onRegistration?("registered: \(ids.joined(separator: ", "))")
        let placement = try Placement(keys: keys, workers: ids, strategy: strategy)
        backend = try RemoteExpertBackend(coordinator: c, spec: spec, placement: placement)
        coordinator = c
        cluster = nil
    }

    /// Stops the worker processes (if any; external workers are sent Shutdown). Also done on deinit.
    public func shutdown() {
        cluster?.shutdown()
        coordinator?.shutdownWorkers(reason: "training finished")
    }

    deinit { shutdown() }
}
