#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Real network faults on emulated nodes' links, for a fault injector: a partition takes a
/// node's veth link down (`ip link set … down`: every packet between it and the coordinator is
/// lost, no connection is reset), packet drop adds `iptables -m statistic --mode random` DROP
/// rules on the node's interface, in the node's own namespace (both directions; the host's
/// firewall is never touched). All of it disappears with the namespaces.
///
///     let links = LinkControl(nodes)
///     try links.partition(node: 1, for: 2.0)          // down now, up again 2 s later
///     try links.dropPackets(node: 0, probability: 0.05)
///     try links.dropPackets(node: 0, probability: 0)  // stop dropping
public final class LinkControl: @unchecked Sendable {
    public let nodes: EmulatedNodes
    private let tools: NetworkTools
    private var mutex = pthread_mutex_t()
    private var dropping: [Int: Double] = [:]

    public init(_ nodes: EmulatedNodes) {
        self.nodes = nodes
        self.tools = nodes.tools
        pthread_mutex_init(&mutex, nil)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    private func check(_ node: Int) throws {
        guard nodes.namespaces.indices.contains(node) else {
            throw NetworkSetupError.invalid("no emulated node \(node) (nodes 0…\(nodes.namespaces.count - 1))")
        }
    }

    /// The emulated nodes' indices.
    public var nodeIndices: Range<Int> { nodes.namespaces.indices }

    /// Takes `node`'s link down (`up: false`) or brings it back up.
    public func setLink(node: Int, up: Bool) throws {
        try check(node)
        try Self.setLink(nodes, node: node, up: up)
    }

    private static func setLink(_ nodes: EmulatedNodes, node: Int, up: Bool) throws {
        try nodes.whileLive {
            try NetworkTools.run(nodes.ipTool, ["link", "set", nodes.hostInterfaces[node], up ? "up" : "down"])
        }
    }

    /// Whether `node`'s link is administratively up.
    public func isLinkUp(node: Int) throws -> Bool {
        try check(node)
        let text = try NetworkTools.run(nodes.ipTool, ["-o", "link", "show", nodes.hostInterfaces[node]])
        guard let flags = text.split(separator: "<").dropFirst().first?.split(separator: ">").first else { return false }
        return flags.split(separator: ",").contains("UP")
    }

    /// Partitions `node` from the coordinator now and heals it after `seconds` (on a detached
    /// thread of its own). Healing after the nodes were removed does nothing.
    public func partition(node: Int, for seconds: Double) throws {
        guard seconds > 0, seconds.isFinite else { throw NetworkSetupError.invalid("partition length must be > 0 s, got \(seconds)") }
        try setLink(node: node, up: false)
        let thread = startThread { [nodes] in
            let end = monotonicSeconds() + seconds
            while monotonicSeconds() < end && !nodes.isRemoved { usleep(10_000) }
            try? Self.setLink(nodes, node: node, up: true)
        }
        pthread_detach(thread)
    }

    /// Drops each packet on `node`'s link with `probability` (0 < p < 1), in both directions;
    /// 0 removes the drop. Replaces a previous probability.
    public func dropPackets(node: Int, probability: Double) throws {
        try check(node)
        guard probability >= 0, probability < 1 else {
            throw NetworkSetupError.invalid("drop probability must be in [0, 1), got \(probability)")
        }
        let iptables = try tools.require("iptables", package: "iptables", purpose: "packet drop on emulated links")
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        try nodes.whileLive {
            let ns = nodes.namespaces[node], dev = nodes.nodeInterface
            func rules(_ p: Double) -> [[String]] {
                let match = ["-m", "statistic", "--mode", "random", "--probability", String(p), "-j", "DROP"]
                return [["INPUT", "-i", dev] + match, ["OUTPUT", "-o", dev] + match]
            }
            if let old = dropping[node] {
                for r in rules(old) { try NetworkTools.run(nodes.ipTool, ["netns", "exec", ns, iptables, "-w", "-D"] + r) }
                dropping[node] = nil
            }
            if probability > 0 {
                for r in rules(probability) { try NetworkTools.run(nodes.ipTool, ["netns", "exec", ns, iptables, "-w", "-A"] + r) }
                dropping[node] = probability
            }
        }
    }

    /// Packets the drop rules on `node` have dropped so far (both directions; 0 without rules).
    public func droppedPackets(node: Int) throws -> Int {
        try check(node)
        guard dropProbability(node: node) > 0, let iptables = tools.locate("iptables") else { return 0 }
        var total = 0
        for chain in ["INPUT", "OUTPUT"] {
            let text = try NetworkTools.run(nodes.ipTool, ["netns", "exec", nodes.namespaces[node], iptables, "-w", "-L", chain, "-v", "-n", "-x"])
            for line in text.split(separator: "\n") where line.contains("statistic") {
                total += line.split(separator: " ").first.flatMap { Int($0) } ?? 0
            }
        }
        return total
    }

    /// The drop probability now set on `node` (0: none).
    public func dropProbability(node: Int) -> Double {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return dropping[node] ?? 0
    }
}

/// The fault injector's partitions on emulated nodes: a cut takes the worker's node link down
/// (`ip link set … down`, so every worker on that node is cut off, as when a rack switch fails)
/// and brings it back up after the duration; `healAll` brings every link up.
public final class LinkPartitions: PartitionDriver {
    let links: LinkControl
    let node: (String) -> Int?

    public init(links: LinkControl, node: @escaping (String) -> Int?) {
        self.links = links
        self.node = node
    }

    public func cut(worker: String, seconds: Double) throws {
        guard let n = node(worker) else {
            throw NetworkSetupError.invalid("worker \(worker) runs on no emulated node")
        }
        try links.partition(node: n, for: seconds)
    }

    public func healAll() {
        for n in links.nodeIndices { try? links.setLink(node: n, up: true) }
    }
}
