import XCTest
import ThorWire
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Registration with real worker processes: only answering workers count, a spare takes a
/// missing worker's place, and a duplicate id is refused by name.
final class RegistrationTests: XCTestCase {
    func spawnWorker(_ endpoint: String, id: String) throws -> pid_t {
        try LocalCluster.spawn(try LocalCluster.locateThorBinary(),
                               ["worker", "--connect", endpoint, "--id", id, "--parent-pid", String(getpid())])
    }

    func testDuplicateIdIsRefusedByNameAndTheFirstKeepsServing() throws {
        let c = try ClusterCoordinator(bind: "tcp://127.0.0.1:*")
        let first = try spawnWorker(c.endpoint, id: "dup")
        defer { _ = exitStatus(first, within: 0) }
        try c.waitForWorkers(count: 1, timeout: 20)
        let second = try spawnWorker(c.endpoint, id: "dup")
        let end = monotonicSeconds() + 10
        while c.refusals.isEmpty && monotonicSeconds() < end { try c.poll(timeout: 0.05) }
        let m = try XCTUnwrap(c.refusals.first)
        XCTAssertTrue(m.contains("worker id dup is already used by a live worker (pid \(first)"), m)
        XCTAssertTrue(m.contains("pid \(second)"), m)
        XCTAssertEqual(exitStatus(second, within: 10), 4, "the refused worker exits with status 4")
        XCTAssertEqual(c.registrations["dup"]?.pid, Int(first))
        XCTAssertEqual(Array(try c.heartbeat(timeout: 5).keys), ["dup"])
        c.shutdownWorkers(reason: "test over")
        XCTAssertNotNil(exitStatus(first, within: 10))
    }

    func testOnlyAnsweringWorkersCountAndASpareTakesAMissingWorkersPlace() throws {
        let c = try ClusterCoordinator(bind: "tcp://127.0.0.1:*")
        let a = try spawnWorker(c.endpoint, id: "a"), b = try spawnWorker(c.endpoint, id: "b")
        var spare: pid_t = 0
        defer { for p in [a, b, spare] where p > 0 { _ = exitStatus(p, within: 0) } }
        let end = monotonicSeconds() + 20
        while c.registrations.count < 2 && monotonicSeconds() < end { try c.poll(timeout: 0.05) }
        XCTAssertEqual(Set(c.registrations.keys), ["a", "b"])
        // b dies after registering: it must not be counted; a spare registers and takes its place.
        kill(b, SIGKILL)
        XCTAssertNotNil(exitStatus(b, within: 5))
        spare = try spawnWorker(c.endpoint, id: "c")
        try c.waitForWorkers(count: 2, timeout: 20)
        XCTAssertEqual(Set(c.liveWorkerIDs.filter { c.isAlive($0) }), ["a", "c"])
        XCTAssertEqual(Set(try c.heartbeat(timeout: 5).keys), ["a", "c"])
        c.shutdownWorkers(reason: "test over")
        for p in [a, spare] { XCTAssertNotNil(exitStatus(p, within: 10)) }
    }
}
