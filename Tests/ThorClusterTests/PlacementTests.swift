import XCTest
import ThorExperts
import ThorCluster

final class PlacementTests: XCTestCase {
    func testStrategiesAreDeterministicAndCoverEveryKey() throws {
        let keys = Placement.allKeys(layers: 2, experts: 4)
        let rr = try Placement(keys: keys.reversed(), workers: ["a", "b", "c"], strategy: .roundRobin)
        XCTAssertEqual(rr, try Placement(keys: keys, workers: ["a", "b", "c"], strategy: .roundRobin))
        XCTAssertEqual(rr.keys(on: "a"), [ExpertKey(layer: 0, expert: 0), ExpertKey(layer: 0, expert: 3), ExpertKey(layer: 1, expert: 2)])
        let blocked = try Placement(keys: keys, workers: ["a", "b"], strategy: .blocked)
        XCTAssertEqual(blocked.keys(on: "a"), Placement.allKeys(layers: 1, experts: 4))
        XCTAssertEqual(blocked.keys(on: "b").map(\.layer), [1, 1, 1, 1])
        for p in [rr, blocked] {
            XCTAssertEqual(p.keys, keys)
            XCTAssertEqual(Set(p.workers.flatMap { p.keys(on: $0) }), Set(keys))
        }
        // Fewer keys than workers: blocked still spreads them.
        let small = try Placement(keys: Array(keys.prefix(2)), workers: ["a", "b", "c"], strategy: .blocked)
        XCTAssertEqual(small.primary(keys[0]), "a")
        XCTAssertEqual(small.primary(keys[1]), "b")
    }

    func testReplicasLandOnDistinctWorkers() throws {
        let keys = Placement.allKeys(layers: 1, experts: 5)
        let p = try Placement(keys: keys, workers: ["a", "b", "c"], strategy: .roundRobin, replicas: 2)
        for k in keys {
            let hosts = p.hosts[k]!
            XCTAssertEqual(hosts.count, 2, "\(k)")
            guard hosts.count == 2 else { continue }
            XCTAssertNotEqual(hosts[0], hosts[1], "\(k)")
            XCTAssertEqual(p.primary(k), hosts[0], "\(k)")
        }
        XCTAssertThrowsError(try Placement(keys: keys, workers: ["a"], strategy: .blocked, replicas: 2)) {
            XCTAssertTrue("\($0)".contains("replicas"), "\($0)")
        }
        XCTAssertThrowsError(try Placement(keys: keys, workers: [], strategy: .blocked))
        XCTAssertThrowsError(try Placement(hosts: [keys[0]: ["zz"]], workers: ["a"])) {
            XCTAssertTrue("\($0)".contains("zz"), "\($0)")
        }
    }
}
