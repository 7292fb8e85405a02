import XCTest
import Foundation
import ThorTensor
import ThorCluster
import ThorCheckpoint
import ThorTraining
#if canImport(Glibc)
import Glibc
#endif

/// Training over emulated nodes (workers in network namespaces behind veth links): the same
/// bits as the local run, also through a real partition and real packet loss, and no
/// namespace left behind, also when a test fails or the run is stopped by a signal.
final class EmulatedNodesTrainingTests: XCTestCase, ThorProcessTest {
    var scratch = ""
    var children: [pid_t] = []

    override func setUpWithError() throws {
        do { try NetworkTools.checkPrivilege(purpose: "this test") } catch {
            throw XCTSkip("emulated-node tests need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): \(error)")
        }
        guard NetworkTools().locate("ip") != nil else { throw XCTSkip("emulated-node tests need `ip` (Debian package iproute2)") }
        scratch = NSTemporaryDirectory() + "thor-netns-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDown() {
        for p in children { kill(p, SIGKILL); var s: Int32 = 0; waitpid(p, &s, 0) }
        // Whatever a failed test's killed runs left is now stale: remove it.
        EmulatedNodes.removeStale()
        if !scratch.isEmpty { try? FileManager.default.removeItem(atPath: scratch) }
    }

    var ip: String { NetworkTools().locate("ip")! }

    /// Namespaces made by process `pid` (`thor-<pid>x…`).
    func namespaces(of pid: pid_t) throws -> [String] {
        try NetworkTools.run(ip, ["netns", "list"]).split(separator: "\n")
            .compactMap { $0.split(separator: " ").first.map(String.init) }
            .filter { $0.hasPrefix("thor-\(pid)x") }
    }

    func configFile(steps: Int) throws -> String {
        var c = tinyConfiguration(workers: 2)
        c.training.maxSteps = steps
        c.training.checkpointInterval = steps
        c.training.logInterval = 4
        c.training.devInterval = 0
        let path = scratch + "/config.json"
        try c.jsonString.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `thor train --emulate-nodes 2 --link 1gbit` ends with the local run's checkpoint, tensor by
    /// tensor, and leaves no namespace behind.
    func testTrainingOverTwoEmulatedNodesEndsWithTheLocalRunsCheckpoint() throws {
        let common = ["train", "--config", try configFile(steps: 12), "--no-eval", "--no-progress"]
        let local = try thor(common + ["--save-dir", scratch + "/a"], log: scratch + "/a.log")
        XCTAssertEqual(wait(local, seconds: 120), 0, log("a.log"))
        let emulated = try thor(common + ["--save-dir", scratch + "/b", "--emulate-nodes", "2", "--link", "1gbit"], log: scratch + "/b.log")
        XCTAssertEqual(wait(emulated, seconds: 120), 0, log("b.log"))
        XCTAssertTrue(log("b.log").contains("emulated nodes: thor-\(emulated)x0-node0 ("), log("b.log"))
        XCTAssertTrue(log("b.log").contains("links limited to 1gbit"), log("b.log"))
        XCTAssertEqual(try namespaces(of: emulated), [], "the run removed its namespaces")
        let (expected, expectedState) = try contents(scratch + "/a/checkpoint-12")
        let (got, gotState) = try contents(scratch + "/b/checkpoint-12")
        XCTAssertEqual(gotState, expectedState)
        XCTAssertEqual(Set(got.keys), Set(expected.keys))
        for (name, bits) in expected { XCTAssertTrue(got[name] == bits, "\(name) differs over emulated nodes") }
    }

    /// SIGTERM mid-run: the run stops (checkpoint, workers down) and removes its namespaces;
    /// refused flag combinations and a missing privilege name the problem.
    func testStoppedRunRemovesItsNamespacesAndBadFlagsAreRefused() throws {
        let config = try configFile(steps: 100_000)
        let run = try thor(["train", "--config", config, "--no-eval", "--no-progress", "--save-dir", scratch + "/c",
                            "--emulate-nodes", "2"], log: scratch + "/c.log")
        let end = monotonicSeconds() + 60
        while !log("c.log").contains("emulated nodes:") && monotonicSeconds() < end { usleep(20_000) }
        usleep(300_000)  // into the training loop
        XCTAssertEqual(try namespaces(of: run).count, 2, log("c.log"))
        kill(run, SIGTERM)
        XCTAssertNotNil(wait(run, seconds: 30), log("c.log"))
        XCTAssertEqual(try namespaces(of: run), [], "removed after SIGTERM: " + log("c.log"))

        let bind = try thor(["train", "--config", config, "--save-dir", scratch + "/d", "--emulate-nodes", "2", "--bind", "tcp://127.0.0.1:5999"],
                            log: scratch + "/d.log")
        XCTAssertNotEqual(wait(bind, seconds: 60), 0)
        XCTAssertTrue(log("d.log").contains("cannot be combined with --bind"), log("d.log"))
        let rate = try thor(["train", "--config", config, "--save-dir", scratch + "/e", "--emulate-nodes", "2", "--link", "fast"],
                            log: scratch + "/e.log")
        XCTAssertNotEqual(wait(rate, seconds: 60), 0)
        XCTAssertTrue(log("e.log").contains("`cluster.link_rate`: link rate 'fast'"), log("e.log"))
        // Without the privilege: refused before the data is loaded or anything is started.
        if let setpriv = NetworkTools().locate("setpriv") {
            let sh = "exec \"$@\" > \(scratch)/f.log 2>&1"
            let nobody = try LocalCluster.spawn("/bin/sh", ["-c", sh, "sh", setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                                                            "--inh-caps=-all", try LocalCluster.locateThorBinary(), "train", "--config", config,
                                                            "--save-dir", scratch + "/f", "--emulate-nodes", "2"])
            children.append(nobody)
            XCTAssertNotEqual(wait(nobody, seconds: 60), 0)
            XCTAssertTrue(log("f.log").contains("--emulate-nodes creates network namespaces and veth links, which needs root or CAP_NET_ADMIN"), log("f.log"))
            XCTAssertFalse(log("f.log").contains("data: "), "refused before loading data: " + log("f.log"))
        }
    }

    /// The in-process run's every tensor after `steps` steps.
    func reference(steps: Int) throws -> [String: Tensor] {
        let s = try Setup(tinyConfiguration())
        for _ in 0..<steps { try s.trainer.trainStep() }
        return try s.snapshot()
    }

    func emulated() -> ThorConfiguration {
        var c = tinyConfiguration(workers: 2)
        c.cluster.emulateNodes = 2
        return c
    }

    /// w1's link goes down in the middle of step 3's backward pass for 2 s (longer than the
    /// 0.75 s dead-worker detection): w1 is declared dead, w0's replicas take over, the step is
    /// redone, and the run ends with the fault-free run's bits.
    func testAPartitionLongerThanDetectionFailsOverToTheSameBits() throws {
        let expected = try reference(steps: 8)
        let s = try Setup(emulated())
        defer { s.runtime.shutdown() }
        let cluster = try XCTUnwrap(s.runtime.cluster)
        let links = try XCTUnwrap(cluster.links)
        var events: [ClusterEvent] = []
        s.runtime.onEvent = { events.append($0) }
        var partitioned = false
        cluster.coordinator.faultHook = { p in
            if p.step == 3, p.phase == .backward, p.worker == "w1", !partitioned {
                partitioned = true
                try? links.partition(node: cluster.node(of: "w1")!, for: 2)
            }
            return .none
        }
        while s.trainer.step < 8 { try s.trainer.trainStep() }
        XCTAssertTrue(partitioned)
        let lost = events.filter { $0.kind == .workerLost && $0.worker == "w1" }
        XCTAssertFalse(lost.isEmpty, "w1 declared dead: \(events)")
        XCTAssertGreaterThanOrEqual(s.trainer.redone, 1, "the interrupted step was redone")
        assertBitwiseEqual(expected, try s.snapshot(), "partitioned run")
        let names = cluster.nodes!.namespaces
        s.runtime.shutdown()
        XCTAssertTrue(Set(try NetworkTools.run(ip, ["netns", "list"]).split(separator: "\n").map { String($0.split(separator: " ")[0]) })
            .isDisjoint(with: names))
    }

    /// A fault plan's partition on emulated nodes is real: the injector (`FaultInjector(plan:cluster:)`)
    /// takes the worker's node link down, w1 is declared dead, and the run ends with the fault-free bits.
    func testFaultPlanPartitionTakesTheNodesLinkDown() throws {
        let expected = try reference(steps: 8)
        let s = try Setup(emulated())
        defer { s.runtime.shutdown() }
        let cluster = try XCTUnwrap(s.runtime.cluster)
        let links = try XCTUnwrap(cluster.links)
        var events: [ClusterEvent] = []
        s.runtime.onEvent = { events.append($0) }
        let plan = FaultPlan(faults: [FaultSpec(kind: .partition, step: 3, phase: .forward, worker: "w1", durationSeconds: 2)])
        let injector = FaultInjector(plan: plan, cluster: cluster)
        XCTAssertTrue(injector.partitions is LinkPartitions, "emulated nodes get real partitions")
        var linkWentDown = false
        injector.onInjected = { f in
            XCTAssertNil(f.skipped, "\(f)")
            linkWentDown = (try? links.isLinkUp(node: cluster.node(of: f.worker)!)) == false
        }
        injector.install(on: cluster.coordinator)
        while s.trainer.step < 8 { try s.trainer.trainStep() }
        injector.finish()
        XCTAssertTrue(linkWentDown, "the node's link was down right after the fault")
        XCTAssertTrue(try links.isLinkUp(node: cluster.node(of: "w1")!), "healed")
        XCTAssertFalse(events.filter { $0.kind == .workerLost && $0.worker == "w1" }.isEmpty, "w1 declared dead: \(events)")
        assertBitwiseEqual(expected, try s.snapshot(), "run through a planned partition")
    }

    /// 5 % of the packets on both links are dropped (iptables statistic match, both directions):
    /// TCP retransmits, and the run ends with the fault-free run's bits.
    func testFivePercentPacketLossEndsWithTheSameBits() throws {
        guard NetworkTools().locate("iptables") != nil else { throw XCTSkip("packet drop needs iptables (Debian package iptables)") }
        let expected = try reference(steps: 8)
        let s = try Setup(emulated())
        defer { s.runtime.shutdown() }
        let cluster = try XCTUnwrap(s.runtime.cluster)
        let links = try XCTUnwrap(cluster.links)
        for node in 0..<2 { try links.dropPackets(node: node, probability: 0.05) }
        while s.trainer.step < 8 { try s.trainer.trainStep() }
        let dropped = try (0..<2).reduce(0) { $0 + (try links.droppedPackets(node: $1)) }
        XCTAssertGreaterThan(dropped, 0, "the rules dropped packets")
        assertBitwiseEqual(expected, try s.snapshot(), "run with 5 % packet loss (\(dropped) packets dropped)")
    }
}
