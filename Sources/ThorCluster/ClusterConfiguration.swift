import ThorTensor

/// Where the routed experts run and how (the `cluster` section of a config file).
/// Defaults: the property initializers (the only place they are written).
public struct ClusterConfiguration: ConfigurationSection {
    /// Expert-worker processes (0: experts run in the coordinator process).
    public var workers: Int = 2
    /// Threads computing expert tasks (row chunks, gradient tiles) concurrently in one process.
    public var expertThreads: Int = 2
    /// Workers hosting each routed expert (0: 2 when there are at least 2 workers, else 1).
    public var replicas: Int = 0
    /// What happens when every replica of an expert is lost.
    public var onExpertLoss: ExpertLossPolicy = .restore
    /// Emulated nodes: the workers run in this many network namespaces joined to the
    /// coordinator by veth links (0: off; needs root). See docs/emulated-nodes.md.
    public var emulateNodes: Int = 0
    /// Rate limit of each emulated node's link, e.g. `1gbit`, `100mbit` (empty: unlimited).
    public var linkRate: String = ""

    public init() {}

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case workers, expertThreads = "expert_threads", replicas, onExpertLoss = "on_expert_loss"
        case emulateNodes = "emulate_nodes", linkRate = "link_rate"
    }

    public func validate(path: String = "cluster") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        try Check.require(workers >= 0, p(.workers), "must be ≥ 0 (0: in-process experts), got \(workers)")
        try Check.require(expertThreads >= 1, p(.expertThreads), "must be ≥ 1, got \(expertThreads)")
        try Check.require(replicas >= 0 && (workers == 0 || replicas <= workers), p(.replicas),
                          "must be between 0 (automatic) and the worker count (\(workers)), got \(replicas)")
        try Check.require(emulateNodes >= 0 && emulateNodes <= EmulatedNodes.maxNodes, p(.emulateNodes),
                          "must be between 0 (off) and \(EmulatedNodes.maxNodes), got \(emulateNodes)")
        try Check.require(emulateNodes == 0 || workers >= emulateNodes, p(.emulateNodes),
                          "needs at least one worker per node: \(emulateNodes) nodes, \(workers) workers")
        if !linkRate.isEmpty {
            try Check.require(emulateNodes > 0, p(.linkRate), "limits emulated nodes' links; set cluster.emulate_nodes too")
            do { _ = try LinkRate(parsing: linkRate) } catch {
                try Check.require(false, p(.linkRate), "\(error)")
            }
        }
    }

    /// The emulated nodes asked for (nil when `emulate_nodes` is 0).
    public var emulatedNodes: EmulatedNodes.Options? {
        guard emulateNodes > 0 else { return nil }
        return EmulatedNodes.Options(nodes: emulateNodes, linkRate: linkRate.isEmpty ? nil : try? LinkRate(parsing: linkRate))
    }

    /// Replicas per expert the run uses: `replicas`, or 2 when there are at least 2 workers.
    public var effectiveReplicas: Int {
        if workers == 0 { return 1 }
        return replicas > 0 ? replicas : (workers >= 2 ? 2 : 1)
    }
}

/// What a run does when every replica of an expert is lost (`cluster.on_expert_loss`,
/// `thor train --on-expert-loss`).
public enum ExpertLossPolicy: String, Sendable, CaseIterable, Codable {
    /// Stop with a non-zero status naming the lost experts and the checkpoint to resume from.
    case fail
    /// Pause until a worker that still holds them comes back, then redo the step.
    case wait
    /// Reload the whole run from the last checkpoint and continue (deterministic replay).
    case restore
}
