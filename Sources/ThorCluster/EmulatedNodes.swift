#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A link's rate limit, as given to `--link` (`1gbit`, `100mbit`, `500kbit`, `64000bit`).
public struct LinkRate: Sendable, Equatable, CustomStringConvertible {
    public var bitsPerSecond: UInt64

    public init(bitsPerSecond: UInt64) { self.bitsPerSecond = bitsPerSecond }

    /// Parses NUMBER followed by `bit`, `kbit`, `mbit`, `gbit` (SI: 1 mbit = 10⁶ bit/s;
    /// the number may have a fraction), case-insensitive. At least 8 kbit/s.
    public init(parsing text: String) throws {
        let t = text.lowercased()
        let units: [(String, Double)] = [("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9), ("bit", 1)]
        guard let (unit, scale) = units.first(where: { t.hasSuffix($0.0) }),
              let n = Double(t.dropLast(unit.count)), n.isFinite, n > 0 else {
            throw NetworkSetupError.invalid("link rate '\(text)' is not a number followed by bit, kbit, mbit or gbit (e.g. 1gbit, 100mbit)")
        }
        let bits = n * scale
        guard bits >= 8_000, bits <= 1e12 else {
            throw NetworkSetupError.invalid("link rate '\(text)' is outside 8kbit…1000gbit")
        }
        bitsPerSecond = UInt64(bits.rounded())
    }

    public var description: String {
        for (unit, scale) in [("gbit", UInt64(1_000_000_000)), ("mbit", 1_000_000), ("kbit", 1_000)] where bitsPerSecond % scale == 0 {
            return "\(bitsPerSecond / scale)\(unit)"
        }
        return "\(bitsPerSecond)bit"
    }

    /// `tc … tbf` arguments: the rate, a bucket of 10 ms at the rate (≥ 32 KiB) that starts full,
    /// so sparse traffic passes without delay, and a queue of 100 ms at the rate (≥ 256 KiB), so a
    /// burst above the rate waits rather than being dropped. No delay is added (no netem here).
    var tbfArguments: [String] {
        let bytesPerSecond = bitsPerSecond / 8
        let burst = max(32 * 1024, bytesPerSecond / 100)
        let limit = max(256 * 1024, bytesPerSecond / 10)
        return ["tbf", "rate", "\(bitsPerSecond)bit", "burst", "\(burst)", "limit", "\(limit)"]
    }
}

/// N emulated nodes on this machine: each its own network namespace (its own TCP/IP stack),
/// joined to this process's namespace by a veth pair whose host end is a port of one bridge
/// holding the coordinator's address; optionally every link rate-limited with `tbf` both ways.
///
///     coordinator (this namespace)  tcp://10.77.S.1:PORT on bridge tb<pid>x<seq>
///        ├── veth tv<pid>x<seq>n0 ── eth0 10.77.S.2 in namespace thor-<pid>x<seq>-node0
///        └── veth tv<pid>x<seq>n1 ── eth0 10.77.S.3 in namespace thor-<pid>x<seq>-node1
///
/// Everything is made with `ip`/`tc` subprocesses and removed by `remove()` (idempotent; also
/// on deinit and when `init` fails halfway): deleting a namespace deletes its veth pair. Names
/// carry the creating process's id, so namespaces and bridges left by a killed run are found and
/// removed by the next one (`removeStale()`, called by `init`).
public final class EmulatedNodes: @unchecked Sendable {
    /// What to build.
    public struct Options: Sendable, Equatable {
        /// Number of nodes (network namespaces), 1…64.
        public var nodes: Int
        /// Rate limit of every link in each direction (nil: unlimited).
        public var linkRate: LinkRate?
        public init(nodes: Int, linkRate: LinkRate? = nil) { self.nodes = nodes; self.linkRate = linkRate }
    }

    static let namespacePrefix = "thor-"
    static let maxNodes = 64
    private static let sequence = Counter()

    public let options: Options
    /// Namespace names, one per node.
    public let namespaces: [String]
    /// Host-side veth interface of each node (a bridge port; `ip link set … down` partitions the node).
    public let hostInterfaces: [String]
    /// The interface inside every namespace.
    public let nodeInterface = "eth0"
    /// The bridge holding the coordinator's address.
    public let bridge: String
    /// The coordinator's address on the bridge (bind `tcp://ADDRESS:*`).
    public let coordinatorAddress: String
    /// Each node's address.
    public let nodeAddresses: [String]
    /// The `ip` executable.
    public let ipTool: String
    /// Namespaces and bridges of dead runs this one removed when it started.
    public let removedStale: [String]
    let tools: NetworkTools
    private var mutex = pthread_mutex_t()
    private var removed = false
    private var created: (bridge: Bool, namespaces: Int) = (false, 0)

    /// Checks the privilege and the tools, removes stale nodes of dead runs, then creates the
    /// namespaces, links and rate limits. Throws (having removed anything it made) with the
    /// failing command and its stderr.
    public init(_ options: Options, tools: NetworkTools = NetworkTools()) throws {
        guard (1...Self.maxNodes).contains(options.nodes) else {
            throw NetworkSetupError.invalid("emulated nodes must be 1…\(Self.maxNodes), got \(options.nodes)")
        }
        try NetworkTools.checkPrivilege(purpose: "--emulate-nodes")
        ipTool = try tools.require("ip", package: "iproute2", purpose: "--emulate-nodes")
        if options.linkRate != nil { _ = try tools.require("tc", package: "iproute2", purpose: "--link") }
        self.options = options
        self.tools = tools
        removedStale = Self.removeStale(tools: tools)
        let tag = "\(getpid())x\(Self.sequence.next() % 100)"
        namespaces = (0..<options.nodes).map { "\(Self.namespacePrefix)\(tag)-node\($0)" }
        hostInterfaces = (0..<options.nodes).map { "tv\(tag)n\($0)" }
        bridge = "tb\(tag)"
        let subnet = try Self.freeSubnet(ip: ipTool)
        coordinatorAddress = "10.77.\(subnet).1"
        nodeAddresses = (0..<options.nodes).map { "10.77.\(subnet).\($0 + 2)" }
        pthread_mutex_init(&mutex, nil)
        do {
            try build()
        } catch {
            remove()
            throw error
        }
    }

    deinit {
        remove()
        pthread_mutex_destroy(&mutex)
    }

    private func ip(_ args: String...) throws { try NetworkTools.run(ipTool, args) }

    private func build() throws {
        try ip("link", "add", bridge, "type", "bridge")
        created.bridge = true
        try ip("addr", "add", "\(coordinatorAddress)/24", "dev", bridge)
        try ip("link", "set", bridge, "up")
        let tc = options.linkRate.flatMap { _ in tools.locate("tc") }
        for k in 0..<options.nodes {
            let ns = namespaces[k], host = hostInterfaces[k]
            try ip("netns", "add", ns)
            created.namespaces = k + 1
            try ip("link", "add", host, "type", "veth", "peer", "name", nodeInterface, "netns", ns)
            try ip("link", "set", host, "master", bridge)
            try ip("link", "set", host, "up")
            try ip("-n", ns, "addr", "add", "\(nodeAddresses[k])/24", "dev", nodeInterface)
            try ip("-n", ns, "link", "set", nodeInterface, "up")
            try ip("-n", ns, "link", "set", "lo", "up")
            if let rate = options.linkRate, let tc {
                // Host end: coordinator → node; node end: node → coordinator.
                try NetworkTools.run(tc, ["qdisc", "add", "dev", host, "root"] + rate.tbfArguments)
                try NetworkTools.run(tc, ["-n", ns, "qdisc", "add", "dev", nodeInterface, "root"] + rate.tbfArguments)
            }
        }
    }

    /// The node hosting worker `index` of `workers`: contiguous groups (w0…w(k-1) on node 0, …),
    /// as a job scheduler fills nodes.
    public func node(ofWorker index: Int, workers: Int) -> Int {
        Self.node(ofWorker: index, workers: workers, nodes: options.nodes)
    }

    public static func node(ofWorker index: Int, workers: Int, nodes: Int) -> Int {
        min(nodes - 1, index * nodes / max(1, workers))
    }

    /// The command line that runs `executable args…` inside `node`'s namespace (`ip netns exec`,
    /// which execs the program in place: the spawned pid is the program's).
    public func command(node: Int, _ executable: String, _ args: [String]) -> (path: String, arguments: [String]) {
        (ipTool, ["netns", "exec", namespaces[node], executable] + args)
    }

    /// Deletes the veth pairs (at once; a deleted namespace's links would go only when the kernel
    /// gets round to destroying it), the namespaces (with their rules) and the bridge.
    /// Idempotent; errors are ignored (something already gone is what we want).
    public func remove() {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if removed { return }
        removed = true
        for k in 0..<created.namespaces {
            _ = try? NetworkTools.run(ipTool, ["link", "delete", hostInterfaces[k]])
            _ = try? NetworkTools.run(ipTool, ["netns", "delete", namespaces[k]])
        }
        if created.bridge { _ = try? NetworkTools.run(ipTool, ["link", "delete", bridge]) }
    }

    /// Whether `remove()` ran.
    public var isRemoved: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return removed
    }

    /// Runs `ip args…` unless the nodes were removed (for `LinkControl`).
    func whileLive(_ body: () throws -> Void) throws {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard !removed else { throw NetworkSetupError.invalid("the emulated nodes were already removed") }
        try body()
    }

    /// The namespaces (`thor-<pid>x<n>-node<k>`) and bridges (`tb<pid>x<n>`) of processes that no
    /// longer exist: what a killed run left behind. Returns what it removed.
    @discardableResult
    public static func removeStale(tools: NetworkTools = NetworkTools()) -> [String] {
        guard let ip = tools.locate("ip") else { return [] }
        var removedNames: [String] = []
        func deadOwner(_ name: Substring, after prefix: String) -> Bool {
            guard name.hasPrefix(prefix) else { return false }
            let digits = name.dropFirst(prefix.count).prefix { $0.isNumber }
            guard let pid = pid_t(digits), name.dropFirst(prefix.count + digits.count).first == "x" else { return false }
            return kill(pid, 0) == -1 && errno == ESRCH
        }
        if let list = try? NetworkTools.run(ip, ["netns", "list"]) {
            for line in list.split(separator: "\n") {
                guard let name = line.split(separator: " ").first, deadOwner(name, after: namespacePrefix) else { continue }
                if (try? NetworkTools.run(ip, ["netns", "delete", String(name)])) != nil { removedNames.append(String(name)) }
            }
        }
        if let links = try? NetworkTools.run(ip, ["-o", "link", "show", "type", "bridge"]) {
            for line in links.split(separator: "\n") {
                let fields = line.split(separator: ":")
                guard fields.count > 1 else { continue }
                let name = fields[1].split(separator: " ").first?.split(separator: "@").first ?? ""
                guard deadOwner(name, after: "tb") else { continue }
                if (try? NetworkTools.run(ip, ["link", "delete", String(name)])) != nil { removedNames.append(String(name)) }
            }
        }
        return removedNames
    }

    /// A /24 in 10.77.0.0/16 no interface uses, searched from this pid's slot.
    static func freeSubnet(ip: String) throws -> Int {
        let text = try NetworkTools.run(ip, ["-o", "-4", "addr", "show"])
        var used = Set<Int>()
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) where word.hasPrefix("10.77.") {
            if let third = word.split(separator: ".").dropFirst(2).first, let s = Int(third) { used.insert(s) }
        }
        let start = Int(getpid()) % 256
        for i in 0..<256 where !used.contains((start + i) % 256) { return (start + i) % 256 }
        throw NetworkSetupError.invalid("every 10.77.X.0/24 subnet is in use on this machine; remove stale emulated nodes (`ip netns list`)")
    }
}

/// A thread-safe counter (names of several node sets in one process differ).
final class Counter: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var value = 0
    init() { pthread_mutex_init(&mutex, nil) }
    func next() -> Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        value += 1
        return value - 1
    }
}
