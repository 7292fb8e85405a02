import XCTest
import Foundation

/// `thor train --coordinators` and `thor coordinator`: bad values are refused with a message naming them.
final class DataParallelCLITests: XCTestCase {
    func testBadCoordinatorFlagsGetClearErrors() throws {
        let cases: [([String], String)] = [
            (["train", "--coordinators", "0", "--no-eval"], "--coordinators must be at least 1"),
            (["train", "--coordinators", "2", "--set", "training.micro_batches=3", "--no-eval"], "needs training.micro_batches = 2"),
            (["train", "--coordinators", "2", "--bind", "tcp://127.0.0.1:5599", "--no-eval"], "--coordinators with --bind"),
            (["coordinator", "--rank", "0", "--coordinators", "2", "--leader", "ipc:///tmp/x", "--bind", "ipc:///tmp/y", "--config", "c.json"],
             "--rank must be in 1…1"),
            (["coordinator", "--rank", "1", "--coordinators", "1", "--leader", "ipc:///tmp/x", "--bind", "ipc:///tmp/y", "--config", "c.json"],
             "--coordinators must be at least 2"),
            (["coordinator", "--rank", "1", "--coordinators", "2", "--leader", "nonsense", "--bind", "ipc:///tmp/y", "--config", "c.json"],
             "--leader"),
            (["worker", "--connect", "tcp://127.0.0.1:5555", "--coordinator", "tcp://127.0.0.1:5555"], "different endpoints"),
            (["worker", "--connect", "tcp://127.0.0.1:5555", "--coordinator", "bogus"], "--coordinator"),
        ]
        for (args, expected) in cases {
            let r = try Thor.run(args, timeout: 60)
            XCTAssertNotEqual(r.status, 0, args.joined(separator: " "))
            XCTAssertTrue(r.stderr.contains(expected), "\(args.joined(separator: " ")): \(r.stderr)")
        }
        let help = try Thor.run(["train", "--help"])
        XCTAssertTrue(help.stdout.contains("--coordinators"), help.stdout)
        let coordinatorHelp = try Thor.run(["coordinator", "--help"])
        XCTAssertTrue(coordinatorHelp.stdout.contains("--leader"), coordinatorHelp.stdout)
    }
}
