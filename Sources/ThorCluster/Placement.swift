import ThorExperts

/// Where each routed expert lives: (layer, expert) → the workers hosting a copy,
/// primary first. Deterministic: the same keys, workers and strategy always give
/// the same placement. Replicas (several workers per key) are representable;
/// today's backend sends each batch to the primary.
public struct Placement: Sendable, Equatable, CustomStringConvertible {
    /// How keys are spread over workers.
    public enum Strategy: String, Sendable, CaseIterable {
        /// Key i (in key order) on worker i mod W: each layer's experts spread over all workers.
        case roundRobin = "round-robin"
        /// Contiguous runs of keys per worker (worker ⌊i·W/N⌋): whole layers tend to stay together.
        case blocked
    }

    /// Worker ids, in the order the placement was built with.
    public let workers: [String]
    /// Hosts of each key, primary first.
    public let hosts: [ExpertKey: [String]]

    /// Places `keys` over `workers` with `strategy`; replica j of a key sits on the
    /// worker j positions after its primary.
    public init(keys: [ExpertKey], workers: [String], strategy: Strategy, replicas: Int = 1) throws {
        guard !workers.isEmpty else { throw ClusterError.placement("no workers to place \(keys.count) experts on") }
        guard Set(workers).count == workers.count else { throw ClusterError.placement("duplicate worker ids in \(workers)") }
        guard replicas >= 1, replicas <= workers.count else {
            throw ClusterError.placement("\(replicas) replicas need between 1 and \(workers.count) (the worker count)")
        }
        let sorted = Array(Set(keys)).sorted()
        let n = sorted.count, w = workers.count
        var hosts: [ExpertKey: [String]] = [:]
        for (i, k) in sorted.enumerated() {
            let primary = strategy == .roundRobin ? i % w : i * w / max(n, 1)
            hosts[k] = (0..<replicas).map { workers[(primary + $0) % w] }
        }
        self.workers = workers
        self.hosts = hosts
    }

    /// An explicit placement. Every host must be one of `workers`.
    public init(hosts: [ExpertKey: [String]], workers: [String]) throws {
        let known = Set(workers)
        for (k, hs) in hosts {
            guard !hs.isEmpty else { throw ClusterError.placement("expert \(k) has no host") }
            guard Set(hs).count == hs.count else { throw ClusterError.placement("expert \(k) placed twice on one worker: \(hs)") }
            for h in hs where !known.contains(h) { throw ClusterError.placement("expert \(k) placed on unknown worker \(h)") }
        }
        self.workers = workers
        self.hosts = hosts
    }

    /// Every (layer, expert) pair of a model with `layers` MoE layers of `experts` experts.
    public static func allKeys(layers: Int, experts: Int) -> [ExpertKey] {
        (0..<layers).flatMap { l in (0..<experts).map { ExpertKey(layer: l, expert: $0) } }
    }

    /// Placed keys in canonical order.
    public var keys: [ExpertKey] { hosts.keys.sorted() }

    /// The worker that computes `key`'s batches.
    public func primary(_ key: ExpertKey) -> String? { hosts[key]?.first }

    /// Keys hosted (as primary or replica) by `worker`, in canonical order.
    public func keys(on worker: String) -> [ExpertKey] {
        hosts.filter { $0.value.contains(worker) }.keys.sorted()
    }

    public var description: String {
        workers.map { w in "\(w): " + keys(on: w).map(\.description).joined(separator: " ") }.joined(separator: "\n")
    }
}
