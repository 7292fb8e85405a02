import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorWire
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// libzmq's PING timeout must not cut a large message in flight (docs/reliability.md, "The
/// transport's PING timeout"): the data connections carry no ZMTP PING, liveness is judged by the
/// beats, and a worker declared dead that beats again is told so (`DECLARED_DEAD`) and registers
/// again with what it holds.
final class PingTimeoutTests: XCTestCase {
    /// One expert of d = 1024, d_ff = 8192: its Export reply or Import request ≈ 200 MB (weights and Adam
    /// moments), in 32 MB frames. libzmq takes a whole frame as the answer to a PING (4 MB frames, each
    /// crossing in less than the window, were never cut), so the frames must each take longer than the window.
    let spec = ExpertSpec(modelDim: 1024, hiddenDim: 8192, activation: .gelu, seed: 11)

    /// A real `thor worker` behind a proxy that holds each direction of each connection to 25 MB/s (each
    /// 32 MB frame crosses in about 1.3 s, the 200 MB state in 8 s, against a 1 s liveness window; its beat
    /// connection is not held behind the data): its Export reply and the Import of that state back are
    /// delivered whole, once — the connection is never closed under them, nothing is sent again (the
    /// resend clock allows for 12.5 MB/s at most). With libzmq's PING timeout at the liveness window on
    /// the data connections (as before), the connection was dropped mid-frame.
    func testStateLargerThanTheLinkCarriesInALivenessWindowIsDeliveredNotCut() throws {
        let c = try ClusterCoordinator(bind: "tcp://127.0.0.1:*", heartbeatInterval: 0.1, heartbeatLiveness: 10)
        let port = try XCTUnwrap(c.endpoint.split(separator: ":").last.flatMap { UInt16($0) })
        let proxy = try ThrottlingProxy(targetPort: port, bytesPerSecond: 25_000_000)
        defer { proxy.stop() }
        let pid = try LocalCluster.spawn(try LocalCluster.locateThorBinary(),
                                         ["worker", "--connect", "tcp://127.0.0.1:\(proxy.port)", "--id", "w0", "--heartbeat-interval", "0.1",
                                          "--heartbeat-liveness", "10", "--parent-pid", String(getpid()), "--orphan-timeout", "10"])
        defer {
            c.shutdownWorkers(reason: "test over")
            var status: Int32 = 0
            for _ in 0..<100 where waitpid(pid, &status, WNOHANG) != pid { usleep(20_000) }
            if kill(pid, 0) == 0 { kill(pid, SIGKILL); waitpid(pid, &status, 0) }
        }
        var resends: [String] = []
        c.onResend = { w, op, why in resends.append("\(w) \(op): \(why)") }
        var losses: [String] = []
        c.onLoss = { losses.append("\($0.worker): \($0.reason)") }
        var reconnects = 0
        c.onRegistration = { _ in reconnects += 1 }
        try c.waitForWorkers(count: 1, timeout: 60)
        reconnects = 0
        let keys = Placement.allKeys(layers: 1, experts: 1)
        let remote = try RemoteExpertBackend(coordinator: c, spec: spec, placement: try Placement(keys: keys, workers: ["w0"], strategy: .roundRobin))
        let reference = InProcessExpertBackend(spec: spec, keys: keys)

        let before = c.counters.bytesReceived
        let state: [ExpertKey: [String: Tensor]]
        do { state = try remote.exportState() } catch { return XCTFail("\(error); losses: \(losses)") }
        XCTAssertGreaterThan(c.counters.bytesReceived - before, 180_000_000, "the Export reply crossed the slow link")
        XCTAssertEqual(Set(state.keys), Set(keys))
        let expected = try reference.exportState()
        for k in keys { for (name, t) in expected[k]! { assertBitwiseEqual([state[k]?[name] ?? Tensor(shape: [0])], [t], "\(k) \(name)") } }

        let sent = c.counters.bytesSent
        do { try remote.importState(state) } catch { return XCTFail("\(error); losses: \(losses)") }  // ≈ 200 MB the other way
        XCTAssertGreaterThan(c.counters.bytesSent - sent, 180_000_000, "the Import crossed the slow link")
        XCTAssertEqual(resends, [], "a message was sent again: its connection was cut under it")
        XCTAssertEqual(c.counters.resends, 0)
        XCTAssertEqual(losses, [])
        XCTAssertEqual(reconnects, 0)
        XCTAssertTrue(c.isAlive("w0"))
    }

    /// A real worker stopped (SIGSTOP) past the liveness window is declared dead; its connection holds
    /// (no PING cuts it), so when it runs again only the coordinator's `DECLARED_DEAD` makes it register
    /// again: the coordinator then knows it still holds its experts at the committed step, which is what
    /// `--on-expert-loss wait` takes back. Without the notice it came back as a spare holding nothing
    /// (`hosted` stayed empty, the revival by beat alone).
    func testAWorkerStoppedPastTheWindowRegistersAgainWithWhatItHolds() throws {
        let cluster = try LocalCluster(workers: 1, transport: .tcp, heartbeatInterval: 0.05, heartbeatLiveness: 3)
        let pid = cluster.processID(of: "w0")
        defer { kill(pid, SIGCONT); cluster.shutdown() }
        let c = cluster.coordinator
        let small = ExpertSpec(modelDim: 8, hiddenDim: 12, activation: .gelu, seed: 5)
        let keys = Placement.allKeys(layers: 1, experts: 2)
        XCTAssertEqual(c.registrations["w0"]?.hosted, [], "registered before it was assigned anything")
        _ = try RemoteExpertBackend(coordinator: c, spec: small, placement: try Placement(keys: keys, workers: ["w0"], strategy: .roundRobin))
        var registrations: [Registration] = []
        c.onRegistration = { registrations.append($0) }

        kill(pid, SIGSTOP)
        let probe = try c.exchangeTolerant([(worker: "w0", message: .heartbeat(sequence: 1, sentUnixNanos: 0))], operation: "Heartbeat", timeout: 30)
        XCTAssertNil(probe[0].message)
        XCTAssertNotNil(c.lost["w0"], "declared dead while stopped")
        try c.poll(timeout: 0.3)  // well past the window
        kill(pid, SIGCONT)
        for _ in 0..<200 where !(registrations.contains { !$0.hosted.isEmpty }) { try c.poll(timeout: 0.05) }
        XCTAssertNil(c.lost["w0"], "back")
        XCTAssertEqual(c.registrations["w0"].map { Set($0.hosted) }, Set(keys), "it registered again naming the experts it still holds")
        XCTAssertEqual(c.registrations["w0"]?.session, c.session)
        XCTAssertEqual(cluster.processID(of: "w0"), pid, "the same process, on the same connection")
    }

    /// With no PING on the data connection, a coordinator cut off without its connections closing (a
    /// partition: every packet lost, no reset) is noticed through the beat connection, which keeps its
    /// PING: the worker's orphan clock runs and it exits as orphaned (`--orphan-timeout 2`). Without the
    /// beat connection's monitor the data connection looked up all along and the worker never exited.
    func testAWorkerCutOffFromItsCoordinatorStillExitsAsOrphaned() throws {
        try EmulatedNodesTests.requirePrivilege()
        let cluster = try LocalCluster(workers: 1, extraArguments: ["--orphan-timeout", "2"], heartbeatInterval: 0.1, heartbeatLiveness: 3,
                                       emulatedNodes: .init(nodes: 1))
        defer { cluster.shutdown() }
        let links = LinkControl(try XCTUnwrap(cluster.nodes))
        var losses: [String] = []
        cluster.coordinator.onLoss = { losses.append($0.reason) }
        try links.setLink(node: 0, up: false)
        defer { try? links.setLink(node: 0, up: true) }
        for _ in 0..<300 where !losses.contains(where: { $0.contains("exited") }) { try cluster.coordinator.poll(timeout: 0.1) }
        XCTAssertTrue(losses.contains { $0.contains("exited") && $0.contains("disconnected from the coordinator") }, "\(losses)")
    }
}
