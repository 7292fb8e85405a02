import ThorModel
import ThorCluster

/// Where a run's routed experts live: this process, or a local cluster of
/// expert-worker processes that this object starts and stops.
public final class ExpertRuntime {
    public let backend: ExpertBackend
    /// The worker processes, when the experts are remote.
    public let cluster: LocalCluster?

    /// `workers` = 0: experts in this process (`threads` of them computed at once);
    /// otherwise starts `workers` `thor worker` processes and places the experts on them.
    public init(configuration: ThorConfiguration, workers: Int, threads: Int,
                transport: LocalCluster.Transport = .ipc, placement strategy: Placement.Strategy = .roundRobin,
                binary: String? = nil) throws {
        let spec = TranslationModel.expertSpec(for: configuration)
        let keys = TranslationModel.expertKeys(for: configuration)
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

    /// Stops the worker processes (if any). Also done on deinit.
    public func shutdown() { cluster?.shutdown() }

    deinit { shutdown() }
}
