import ThorExperts

/// Where each routed expert lives: (layer, expert) → the workers hosting a copy,
/// primary first. Deterministic: the same keys, workers, hosts and strategy always give
/// the same placement.
///
/// Replicas: the workers are put in a ring that alternates between nodes (hostnames)
/// as long as it can; replica j of a key sits j positions after its primary. So no two
/// replicas of a key share a worker, and — when at least R nodes remain in the ring's
/// rotation — not a node either: every expert survives any R − 1 worker failures (and
/// any R − 1 node failures when nodes are balanced). See docs/reliability.md.
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
    /// worker j positions after its primary in the node-alternating ring (`hostnames`:
    /// worker → node; workers without one count as a node each).
    public init(keys: [ExpertKey], workers: [String], strategy: Strategy, replicas: Int = 1,
                hostnames: [String: String] = [:]) throws {
        guard !workers.isEmpty else { throw ClusterError.placement("no workers to place \(keys.count) experts on") }
        guard Set(workers).count == workers.count else { throw ClusterError.placement("duplicate worker ids in \(workers)") }
        guard replicas >= 1, replicas <= workers.count else {
            throw ClusterError.placement("\(replicas) replicas need between 1 and \(workers.count) (the worker count)")
        }
        let sorted = Array(Set(keys)).sorted()
        let n = sorted.count, w = workers.count
        let ring = Placement.nodeAlternating(workers, hostnames: hostnames)
        var hosts: [ExpertKey: [String]] = [:]
        for (i, k) in sorted.enumerated() {
            let primary = strategy == .roundRobin ? i % w : i * w / max(n, 1)
            hosts[k] = (0..<replicas).map { ring[(primary + $0) % w] }
        }
        self.workers = workers
        self.hosts = hosts
    }

    /// `workers` reordered so that consecutive ones (cyclically) are on different nodes where
    /// possible: nodes in order of first appearance, taking one worker from each in turn.
    /// With one node (or no hostnames) the order is unchanged.
    public static func nodeAlternating(_ workers: [String], hostnames: [String: String]) -> [String] {
        var nodes: [String] = [], members: [String: [String]] = [:]
        for w in workers {
            let node = hostnames[w] ?? "worker:" + w
            if members[node] == nil { nodes.append(node) }
            members[node, default: []].append(w)
        }
        if nodes.count <= 1 || nodes.count == workers.count { return workers }
        // Largest node first so its workers are spread as thinly as possible.
        let order = nodes.sorted { (members[$0]!.count, nodes.firstIndex(of: $1)!) > (members[$1]!.count, nodes.firstIndex(of: $0)!) }
        var result: [String] = []
        var round = 0
        while result.count < workers.count {
            for node in order where round < members[node]!.count { result.append(members[node]![round]) }
            round += 1
        }
        return result
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
