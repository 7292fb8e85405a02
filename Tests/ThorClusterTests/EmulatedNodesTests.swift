import XCTest
import ThorTensor
import ThorExperts
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Emulated nodes: network namespaces joined by veth links, made and removed by thor,
/// refused clearly without the privilege, and stale ones of killed runs cleaned up.
final class EmulatedNodesTests: XCTestCase {
    /// Skips (with why) unless this process may create namespaces and `ip` is installed.
    static func requirePrivilege() throws {
        do { try NetworkTools.checkPrivilege(purpose: "this test") } catch {
            throw XCTSkip("emulated-node tests need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): \(error)")
        }
        guard NetworkTools().locate("ip") != nil else { throw XCTSkip("emulated-node tests need `ip` (Debian package iproute2)") }
    }

    var ip: String { NetworkTools().locate("ip")! }

    /// Every namespace, or those made by process `pid` (tests may run in parallel processes).
    func namespaces(of pid: pid_t? = nil) throws -> [String] {
        try NetworkTools.run(ip, ["netns", "list"]).split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
            .filter { pid == nil || $0.hasPrefix("thor-\(pid!)x") }
    }

    func linkExists(_ name: String, in namespace: String? = nil) -> Bool {
        let args = (namespace.map { ["-n", $0] } ?? []) + ["link", "show", name]
        return (try? NetworkTools.run(ip, args)) != nil
    }

    /// The network-namespace inode of a process, or of a named namespace.
    func netnsInode(_ path: String) -> UInt {
        var st = stat()
        guard stat(path, &st) == 0 else { return 0 }
        return UInt(st.st_ino)
    }

    func testLinkRatesParseAndBadOnesAreNamed() throws {
        XCTAssertEqual(try LinkRate(parsing: "1gbit").bitsPerSecond, 1_000_000_000)
        XCTAssertEqual(try LinkRate(parsing: "100Mbit").bitsPerSecond, 100_000_000)
        XCTAssertEqual(try LinkRate(parsing: "2.5mbit").bitsPerSecond, 2_500_000)
        XCTAssertEqual(try LinkRate(parsing: "100mbit").description, "100mbit")
        for bad in ["fast", "100", "mbit", "-1gbit", "0mbit", "1bit", "5000gbit"] {
            XCTAssertThrowsError(try LinkRate(parsing: bad), bad) { e in
                XCTAssertTrue("\(e)".contains("link rate '\(bad)'"), "\(e)")
            }
        }
    }

    func testConfigurationKeysAreChecked() throws {
        var c = ClusterConfiguration()
        c.workers = 2
        c.emulateNodes = 3
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("cluster.emulate_nodes"), "\($0)") }
        c.emulateNodes = 0
        c.linkRate = "1gbit"
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("cluster.link_rate"), "\($0)") }
        c.emulateNodes = 2
        c.linkRate = "lots"
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("`cluster.link_rate`: link rate 'lots'"), "\($0)") }
        c.linkRate = "100mbit"
        XCTAssertNoThrow(try c.validate())
        XCTAssertEqual(c.emulatedNodes, EmulatedNodes.Options(nodes: 2, linkRate: LinkRate(bitsPerSecond: 100_000_000)))
        XCTAssertNil(ClusterConfiguration().emulatedNodes)
    }

    /// Workers split into contiguous groups, as a scheduler fills nodes.
    func testWorkersAreGroupedOntoNodes() {
        XCTAssertEqual((0..<4).map { EmulatedNodes.node(ofWorker: $0, workers: 4, nodes: 2) }, [0, 0, 1, 1])
        XCTAssertEqual((0..<3).map { EmulatedNodes.node(ofWorker: $0, workers: 3, nodes: 2) }, [0, 0, 1])
        XCTAssertEqual((0..<2).map { EmulatedNodes.node(ofWorker: $0, workers: 2, nodes: 2) }, [0, 1])
    }

    func testAMissingIpIsRefusedClearlyAndNothingIsMade() throws {
        try Self.requirePrivilege()
        let before = try namespaces(of: getpid())
        XCTAssertThrowsError(try EmulatedNodes(.init(nodes: 2), tools: NetworkTools(searchPath: ["/nonexistent"]))) { e in
            XCTAssertEqual(e as? NetworkSetupError, .toolMissing(
                "--emulate-nodes needs `ip` (Debian package iproute2), which is not in /nonexistent; install it (scripts/install-deps.sh does) or run without it"))
        }
        XCTAssertEqual(try namespaces(of: getpid()), before)
    }

    /// As `nobody` (no capabilities), `thor cluster --emulate-nodes` refuses, naming the privilege,
    /// and creates nothing.
    func testWithoutPrivilegeThorRefusesClearly() throws {
        try Self.requirePrivilege()
        guard let setpriv = NetworkTools().locate("setpriv") else { throw XCTSkip("needs setpriv (util-linux)") }
        let binary = try LocalCluster.locateThorBinary()
        let out = "/tmp/thor-netns-refusal-\(getpid()).log"
        defer { unlink(out) }
        let pid = try LocalCluster.spawn("/bin/sh", ["-c", "exec \"$@\" > \(out) 2>&1", "sh", setpriv,
                                                     "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                                                     binary, "cluster", "--workers", "2", "--emulate-nodes", "2"])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = readText(out)
        XCTAssertNotEqual(status, 0, text)
        XCTAssertTrue(text.contains("--emulate-nodes creates network namespaces and veth links, which needs root or CAP_NET_ADMIN and CAP_SYS_ADMIN"), text)
        XCTAssertTrue(text.contains("uid 65534"), text)
        XCTAssertEqual(try namespaces(of: pid), [], "nothing was made")
    }

    /// Namespaces, the bridge, the links and their tbf limits exist while the nodes live and
    /// are all gone after `remove()`.
    func testNodesAreMadeWithRateLimitsAndRemoved() throws {
        try Self.requirePrivilege()
        let nodes = try EmulatedNodes(.init(nodes: 2, linkRate: try LinkRate(parsing: "100mbit")))
        defer { nodes.remove() }
        XCTAssertTrue(Set(try namespaces()).isSuperset(of: nodes.namespaces))
        XCTAssertTrue(nodes.namespaces[0].hasPrefix("thor-\(getpid())x"), nodes.namespaces[0])
        XCTAssertTrue(linkExists(nodes.bridge))
        XCTAssertTrue(nodes.coordinatorAddress.hasPrefix("10.77."))
        for k in 0..<2 {
            XCTAssertTrue(linkExists(nodes.hostInterfaces[k]))
            XCTAssertTrue(linkExists("eth0", in: nodes.namespaces[k]))
            let host = try NetworkTools.run(ip, ["-o", "addr", "show", "dev", "eth0"].withNamespace(nodes.namespaces[k]))
            XCTAssertTrue(host.contains(nodes.nodeAddresses[k] + "/24"), host)
            let tc = NetworkTools().locate("tc")!
            for args in [["qdisc", "show", "dev", nodes.hostInterfaces[k]], ["-n", nodes.namespaces[k], "qdisc", "show", "dev", "eth0"]] {
                let q = try NetworkTools.run(tc, args)
                XCTAssertTrue(q.contains("tbf") && q.contains("rate 100Mbit"), q)
            }
        }
        nodes.remove()
        nodes.remove()  // idempotent
        XCTAssertTrue(Set(try namespaces()).isDisjoint(with: nodes.namespaces))
        XCTAssertFalse(linkExists(nodes.bridge))
        for h in nodes.hostInterfaces { XCTAssertFalse(linkExists(h)) }
    }

    /// What a killed run left (a namespace and a bridge named after a dead pid) is removed by
    /// the next run; a live process's are left alone.
    func testStaleNodesOfADeadRunAreRemovedNextTime() throws {
        try Self.requirePrivilege()
        let dead = try LocalCluster.spawn("/bin/true", [])
        var status: Int32 = 0
        waitpid(dead, &status, 0)
        let staleNamespace = "thor-\(dead)x0-node0", staleBridge = "tb\(dead)x0"
        try NetworkTools.run(ip, ["netns", "add", staleNamespace])
        try NetworkTools.run(ip, ["link", "add", staleBridge, "type", "bridge"])
        defer {
            _ = try? NetworkTools.run(ip, ["netns", "delete", staleNamespace])
            _ = try? NetworkTools.run(ip, ["link", "delete", staleBridge])
        }
        let live = try EmulatedNodes(.init(nodes: 1))  // runs removeStale itself
        defer { live.remove() }
        XCTAssertFalse(try namespaces().contains(staleNamespace))
        XCTAssertFalse(linkExists(staleBridge))
        XCTAssertTrue(try namespaces().contains(live.namespaces[0]), "a live process's namespace stays")
        XCTAssertFalse(EmulatedNodes.removeStale().contains(live.namespaces[0]))
        XCTAssertTrue(try namespaces().contains(live.namespaces[0]))
    }

    /// A local cluster of 4 workers on 2 emulated nodes: each worker runs in its node's namespace, the
    /// coordinator listens on the bridge, the smoke exchange matches the in-process backend bit for
    /// bit, and shutdown removes every namespace.
    func testWorkersRunInTheirNodesNamespacesAndComputeTheSameBits() throws {
        try Self.requirePrivilege()
        let cluster = try LocalCluster(workers: 4, emulatedNodes: .init(nodes: 2, linkRate: try LinkRate(parsing: "1gbit")))
        defer { cluster.shutdown() }
        let nodes = try XCTUnwrap(cluster.nodes)
        XCTAssertTrue(cluster.coordinator.endpoint.hasPrefix("tcp://\(nodes.coordinatorAddress):"), cluster.coordinator.endpoint)
        XCTAssertEqual(cluster.workerNodes, [0, 0, 1, 1])
        XCTAssertEqual(cluster.coordinator.sharedLinks.count, 0, "emulated nodes never share memory (their bytes cross the emulated links)")
        let mine = netnsInode("/proc/self/ns/net")
        for (i, id) in cluster.workerIDs.enumerated() {
            let inode = netnsInode("/proc/\(cluster.processID(of: id))/ns/net")
            XCTAssertEqual(inode, netnsInode("/run/netns/\(nodes.namespaces[cluster.workerNodes[i]])"), "\(id) runs in its node's namespace")
            XCTAssertNotEqual(inode, mine)
        }
        let spec = ExpertSpec(modelDim: 8, hiddenDim: 12, activation: .gelu, seed: 5)
        let keys = Placement.allKeys(layers: 2, experts: 3)
        let placement = try Placement(keys: keys, workers: cluster.workerIDs, strategy: .roundRobin, replicas: 2,
                                      hostnames: ["w0": "node0", "w1": "node0", "w2": "node1", "w3": "node1"])
        for k in keys { XCTAssertEqual(Set(placement.hosts[k]!.map { cluster.node(of: $0)! }), [0, 1], "replicas of \(k) on both nodes") }
        let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: spec, placement: placement)
        let report = try BackendComparison(layers: 2, experts: 3).run(remote, InProcessExpertBackend(spec: spec, keys: keys), steps: 2)
        XCTAssertTrue(report.identical, "\(report)")
        let names = nodes.namespaces
        cluster.shutdown()
        XCTAssertTrue(Set(try namespaces()).isDisjoint(with: names))
        XCTAssertFalse(linkExists(nodes.bridge))
    }

    /// A partition takes the link down and heals it; packet drop adds and removes its rules.
    func testLinkControlPartitionsAndDrops() throws {
        try Self.requirePrivilege()
        let nodes = try EmulatedNodes(.init(nodes: 2))
        defer { nodes.remove() }
        let links = LinkControl(nodes)
        XCTAssertTrue(try links.isLinkUp(node: 1))
        try links.partition(node: 1, for: 0.3)
        XCTAssertFalse(try links.isLinkUp(node: 1))
        XCTAssertTrue(try links.isLinkUp(node: 0))
        let end = monotonicSeconds() + 5
        while !(try links.isLinkUp(node: 1)) && monotonicSeconds() < end { usleep(20_000) }
        XCTAssertTrue(try links.isLinkUp(node: 1), "healed after the partition")
        XCTAssertThrowsError(try links.setLink(node: 2, up: false)) { XCTAssertTrue("\($0)".contains("no emulated node 2"), "\($0)") }
        guard let iptables = NetworkTools().locate("iptables") else { throw XCTSkip("packet drop needs iptables") }
        try links.dropPackets(node: 0, probability: 0.05)
        let rules = try NetworkTools.run(ip, ["netns", "exec", nodes.namespaces[0], iptables, "-S"])
        XCTAssertTrue(rules.contains("-A INPUT -i eth0 -m statistic --mode random --probability 0.0") && rules.contains("-A OUTPUT -o eth0"), rules)
        XCTAssertEqual(links.dropProbability(node: 0), 0.05)
        XCTAssertEqual(try links.droppedPackets(node: 0), 0, "nothing crossed the link yet")
        try links.dropPackets(node: 0, probability: 0)
        XCTAssertFalse(try NetworkTools.run(ip, ["netns", "exec", nodes.namespaces[0], iptables, "-S"]).contains("statistic"))
        XCTAssertThrowsError(try links.dropPackets(node: 0, probability: 1.5)) { XCTAssertTrue("\($0)".contains("[0, 1)"), "\($0)") }
    }
}

private extension Array where Element == String {
    func withNamespace(_ ns: String) -> [String] { ["-n", ns] + self }
}

private func readText(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
