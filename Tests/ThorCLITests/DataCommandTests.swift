import XCTest
import Foundation

/// `thor data build`: flags are checked before anything is fetched.
final class DataCommandTests: XCTestCase {
    func testBadArgumentsAreNamedAndNothingIsWritten() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("thor-data-cli-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let cases: [([String], String)] = [
            (["data", "build", "bilingual", "--out", out], "unknown corpus 'bilingual'"),
            (["data", "build", "multilingual", "--out", out, "--languages", "de,xx"], "unknown language 'xx'"),
            (["data", "build", "multilingual", "--out", out, "--languages", "de,de"], "lists a language twice"),
            (["data", "build", "multi-domain", "--out", out, "--languages", "de"], "--languages applies to multilingual only"),
            (["data", "build", "multi-domain", "--out", out, "--from-english"], "--from-english applies to multilingual only"),
        ]
        for (args, message) in cases {
            let r = try Thor.run(args, timeout: 60)
            XCTAssertNotEqual(r.status, 0, args.joined(separator: " "))
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(args) created the output directory")
        }
    }

    func testHelpSaysWhereTheTextComesFrom() throws {
        let r = try Thor.run(["data", "build", "--help"], timeout: 60)
        XCTAssertEqual(r.status, 0)
        for phrase in ["apt-get download", "research use", "multi-domain", "multilingual", "stats.md"] {
            XCTAssertTrue(r.stdout.contains(phrase), "help lacks \(phrase)")
        }
    }
}
