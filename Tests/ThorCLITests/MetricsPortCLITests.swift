import XCTest
import Foundation

/// `thor train --metrics-port`: documented in --help, bad values refused by name before anything starts.
final class MetricsPortCLITests: XCTestCase {
    func testMetricsFlagsAreExplainedAndCheckedUpFront() throws {
        let help = try Thor.run(["train", "--help"])
        XCTAssertTrue(help.stdout.contains("--metrics-port") && help.stdout.contains("--metrics-address")
                      && help.stdout.contains("Prometheus"), help.stdout)
        let dir = NSTemporaryDirectory() + "thor-metrics-cli-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let range = try Thor.run(["train", "--metrics-port", "70000", "--save-dir", dir, "--no-progress"])
        XCTAssertNotEqual(range.status, 0)
        XCTAssertTrue(range.stderr.contains("--metrics-port") && range.stderr.contains("70000"), range.stderr)
        let address = try Thor.run(["train", "--metrics-port", "0", "--metrics-address", "nowhere", "--save-dir", dir, "--no-progress"])
        XCTAssertNotEqual(address.status, 0)
        XCTAssertTrue(address.stderr.contains("nowhere") && address.stderr.contains("IPv4"), address.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "a refused run writes nothing")
    }
}
