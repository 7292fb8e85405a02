import XCTest
import Foundation

/// `thor keys generate`, the key flags' errors, and a CURVE-secured `thor train --bind` over
/// loopback tcp whose checkpoint equals an unsecured local run's bit for bit.
final class KeysCommandTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-keys-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch + "/allowed", withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func mode(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! NSNumber).intValue
    }

    func testGenerateWritesAnOwnerOnlySecretAndRefusesToOverwrite() throws {
        let prefix = scratch + "/node"
        let r = try Thor.run(["keys", "generate", "--out", prefix])
        XCTAssertEqual(r.status, 0, r.stderr)
        let pub = try String(contentsOfFile: prefix + ".pub", encoding: .utf8)
        let key = pub.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertEqual(key.count, 40)
        XCTAssertTrue(r.stdout.contains(key), r.stdout)
        XCTAssertEqual(try mode(prefix + ".key"), 0o600)
        XCTAssertFalse(try String(contentsOfFile: prefix + ".key", encoding: .utf8).contains(key), "the secret file holds the secret key")

        let again = try Thor.run(["keys", "generate", "--out", prefix])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("already exists") && again.stderr.contains("--force"), again.stderr)
        XCTAssertEqual(try String(contentsOfFile: prefix + ".pub", encoding: .utf8), pub, "a refused generate changes nothing")
        XCTAssertEqual(try Thor.run(["keys", "generate", "--out", prefix, "--force"]).status, 0)
        XCTAssertNotEqual(try String(contentsOfFile: prefix + ".pub", encoding: .utf8), pub)
    }

    func testBindBeyondLoopbackNeedsKeysOrInsecureAndKeyErrorsAreClear() throws {
        let dir = scratch + "/run"
        let open = try Thor.run(["train", "--bind", "tcp://0.0.0.0:5555", "--workers", "1", "--save-dir", dir, "--no-progress"])
        XCTAssertNotEqual(open.status, 0)
        XCTAssertTrue(open.stderr.contains("--insecure") && open.stderr.contains("--server-key"), open.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "a refused start writes nothing")
        let cluster = try Thor.run(["cluster", "--bind", "tcp://*:5555", "--workers", "1"])
        XCTAssertNotEqual(cluster.status, 0)
        XCTAssertTrue(cluster.stderr.contains("--insecure"), cluster.stderr)

        XCTAssertEqual(try Thor.run(["keys", "generate", "--out", scratch + "/c"]).status, 0)
        let half = try Thor.run(["train", "--bind", "tcp://0.0.0.0:5555", "--server-key", scratch + "/c.key", "--save-dir", dir])
        XCTAssertTrue(half.stderr.contains("go together"), half.stderr)
        let missing = try Thor.run(["cluster", "--bind", "tcp://0.0.0.0:5555", "--server-key", scratch + "/nope.key",
                                    "--allowed-keys", scratch + "/allowed"])
        XCTAssertTrue(missing.stderr.contains("nope.key: cannot read it"), missing.stderr)
        chmod(scratch + "/c.key", 0o644)
        let tooOpen = try Thor.run(["worker", "--connect", "tcp://127.0.0.1:5555", "--key", scratch + "/c.key",
                                    "--server-public-key", scratch + "/c.pub"])
        XCTAssertNotEqual(tooOpen.status, 0)
        XCTAssertTrue(tooOpen.stderr.contains("c.key") && tooOpen.stderr.contains("chmod 600"), tooOpen.stderr)
        let lone = try Thor.run(["worker", "--connect", "tcp://127.0.0.1:5555", "--key", scratch + "/c.key"])
        XCTAssertTrue(lone.stderr.contains("--key and --server-public-key go together"), lone.stderr)
        let local = try Thor.run(["cluster", "--workers", "1", "--server-key", scratch + "/c.key", "--allowed-keys", scratch + "/allowed"])
        XCTAssertTrue(local.stderr.contains("--bind"), local.stderr)
    }

    /// Two keyed workers and one stranger connect to a secured `thor train --bind`: the stranger
    /// is refused and logged, the run trains on the two, and its checkpoint equals a local run's.
    func testSecuredTrainingOverLoopbackEqualsALocalRun() throws {
        for name in ["coordinator", "allowed/w1", "allowed/w2", "stranger"] {
            XCTAssertEqual(try Thor.run(["keys", "generate", "--out", scratch + "/" + name]).status, 0)
        }
        let port = Int.random(in: 30000..<60000)
        let endpoint = "tcp://127.0.0.1:\(port)"
        var workers: [Process] = []
        defer { for w in workers where w.isRunning { w.terminate(); w.waitUntilExit() } }
        func worker(_ id: String, key: String) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Thor.binary)
            p.arguments = ["worker", "--connect", endpoint, "--id", id, "--orphan-timeout", "60",
                           "--key", scratch + "/\(key).key", "--server-public-key", scratch + "/coordinator.pub"]
            p.standardError = FileHandle.nullDevice
            try p.run()
            workers.append(p)
            return p
        }
        _ = try worker("w1", key: "allowed/w1")
        _ = try worker("w2", key: "allowed/w2")
        let stranger = try worker("stranger", key: "stranger")
        let common = ["--max-steps", "20", "--workers", "2", "--no-progress", "--no-eval"] + CommandLineTests.tiny
        let secured = try Thor.run(["train", "--bind", endpoint, "--server-key", scratch + "/coordinator.key",
                                    "--allowed-keys", scratch + "/allowed", "--registration-timeout", "60",
                                    "--save-dir", scratch + "/secured"] + common)
        XCTAssertEqual(secured.status, 0, secured.stderr)
        XCTAssertTrue(secured.stderr.contains("links are CURVE-encrypted"), secured.stderr)
        let strangerKey = try String(contentsOfFile: scratch + "/stranger.pub", encoding: .utf8).split(separator: "\n").last!
        XCTAssertTrue(secured.stderr.contains("refused a connection from 127.0.0.1 with public key \(strangerKey)"), secured.stderr)
        XCTAssertTrue(secured.stderr.contains("registered: w1, w2"), secured.stderr)
        stranger.waitUntilExit()
        XCTAssertEqual(stranger.terminationStatus, 4, "the stranger is refused")

        let local = try Thor.run(["train", "--save-dir", scratch + "/local"] + common)
        XCTAssertEqual(local.status, 0, local.stderr)
        let files = ["coordinator.safetensors", "config.json", "state.json"]
            + (0..<2).flatMap { l in (0..<4).map { "experts/moe-\(l)-expert-\($0).safetensors" } }
        for f in files {
            let a = try Data(contentsOf: URL(fileURLWithPath: scratch + "/secured/checkpoint-last/" + f))
            let b = try Data(contentsOf: URL(fileURLWithPath: scratch + "/local/checkpoint-last/" + f))
            XCTAssertTrue(a == b, "\(f) differs between the secured and the local run")
        }
    }
}
