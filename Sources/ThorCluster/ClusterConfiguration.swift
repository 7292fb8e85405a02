import ThorTensor

/// Where the routed experts run and how (the `cluster` section of a config file).
/// Defaults: the property initializers (the only place they are written).
public struct ClusterConfiguration: ConfigurationSection {
    /// Expert-worker processes (0: experts run in the coordinator process).
    public var workers: Int = 2
    /// Threads computing expert tasks (row chunks, gradient tiles) concurrently in one process.
    public var expertThreads: Int = 2

    public init() {}

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case workers, expertThreads = "expert_threads"
    }

    public func validate(path: String = "cluster") throws {
        func p(_ k: CodingKeys) -> String { "\(path).\(k.stringValue)" }
        try Check.require(workers >= 0, p(.workers), "must be ≥ 0 (0: in-process experts), got \(workers)")
        try Check.require(expertThreads >= 1, p(.expertThreads), "must be ≥ 1, got \(expertThreads)")
    }
}
