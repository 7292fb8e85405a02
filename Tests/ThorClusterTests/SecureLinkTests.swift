import XCTest
import Foundation
import ThorTensor
import ThorExperts
import ThorTransport
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// CURVE-secured links with real worker processes over loopback tcp: only workers whose
/// public key is allowed register; the others are refused (and logged) before they can
/// register, so they get no assignment and no tensor; the admitted worker trains bit for
/// bit like the in-process reference (hence like an unsecured run).
final class SecureLinkTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = "/tmp/thor-secure-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        XCTAssertEqual(mkdir(scratch, 0o700), 0)
    }

    override func tearDown() {
        if let scratch {
            for sub in ["allowed/w.pub", "allowed/w.key", "stranger.pub", "stranger.key", "coordinator.pub", "coordinator.key"] { unlink(scratch + "/" + sub) }
            rmdir(scratch + "/allowed"); rmdir(scratch)
        }
    }

    func testOnlyAllowedKeysRegisterAndTheAdmittedWorkerComputesTheSameBits() throws {
        try XCTSkipUnless(ZMQContext.has("curve"), "libzmq without CURVE")
        XCTAssertEqual(mkdir(scratch + "/allowed", 0o700), 0)
        let server = try CurveKeyPair.generate()
        try KeyFiles.write(server, prefix: scratch + "/coordinator")
        try KeyFiles.write(try CurveKeyPair.generate(), prefix: scratch + "/allowed/w")
        let stranger = try CurveKeyPair.generate()
        try KeyFiles.write(stranger, prefix: scratch + "/stranger")
        let security = try CoordinatorSecurity.load(serverKey: scratch + "/coordinator.key", allowedKeys: scratch + "/allowed")

        final class Lines: @unchecked Sendable {
            var mutex = pthread_mutex_t(); var lines: [String] = []
            init() { pthread_mutex_init(&mutex, nil) }
            func add(_ s: String) { pthread_mutex_lock(&mutex); lines.append(s); pthread_mutex_unlock(&mutex) }
            var all: [String] { pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }; return lines }
        }
        let log = Lines()
        let c = try ClusterCoordinator(bind: "tcp://127.0.0.1:*", security: security, securityLog: { log.add($0) })
        let thor = try LocalCluster.locateThorBinary()
        func worker(_ id: String, _ keys: [String]) throws -> pid_t {
            try LocalCluster.spawn(thor, ["worker", "--connect", c.endpoint, "--id", id, "--parent-pid", String(getpid()),
                                          "--orphan-timeout", "20"] + keys)
        }
        let noKey = try worker("no-key", [])
        let unknown = try worker("unknown", ["--key", scratch + "/stranger.key", "--server-public-key", scratch + "/coordinator.pub"])
        let good = try worker("good", ["--key", scratch + "/allowed/w.key", "--server-public-key", scratch + "/coordinator.pub"])
        var pids = [noKey, unknown, good]
        defer { for p in pids { _ = exitStatus(p, within: 0) } }

        try c.waitForWorkers(count: 1, timeout: 30)
        // The refused workers learn it from the handshake and exit with status 4 (refused).
        let end = monotonicSeconds() + 15
        var statuses: [pid_t: Int32] = [:]
        while statuses.count < 2 && monotonicSeconds() < end {
            try c.poll(timeout: 0.05)
            for p in [noKey, unknown] where statuses[p] == nil {
                var s: Int32 = 0
                if waitpid(p, &s, WNOHANG) == p { statuses[p] = s & 0x7f == 0 ? (s >> 8) & 0xff : -(s & 0x7f) }
            }
        }
        pids = [good]
        XCTAssertEqual(statuses[noKey], 4, "a worker without a key is refused (exit status 4)")
        XCTAssertEqual(statuses[unknown], 4, "a worker with an unknown key is refused (exit status 4)")
        XCTAssertEqual(Array(c.registrations.keys), ["good"], "only the admitted worker registered")

        // The coordinator logged both refusals: the unknown key by value and address, the keyless client.
        let refusals = try XCTUnwrap(c.zap).refusals
        XCTAssertTrue(refusals.contains { $0.key == stranger.publicKey && $0.address == "127.0.0.1" }, "\(refusals)")
        // The keyless client fails before ZAP: libzmq reports a mechanism mismatch, or (when the client
        // noticed first and hung up) a handshake closed without detail. Either way it is logged, keyless.
        XCTAssertTrue(refusals.contains { $0.key == nil && ($0.reason.contains("does not use CURVE") || $0.reason.contains("without keys")) },
                      "\(refusals)")
        XCTAssertTrue(log.all.contains { $0.contains(stranger.publicKey) && $0.contains("not in the allowed set") }, "\(log.all)")
        XCTAssertEqual(c.zap?.admitted.contains(security.allowedKeys.keys.first!), true)

        // The admitted worker trains over the encrypted link exactly like the in-process experts.
        let spec = ExpertSpec(modelDim: 8, hiddenDim: 16, activation: .gelu, seed: 3)
        let keys = Placement.allKeys(layers: 2, experts: 3)
        let remote = try RemoteExpertBackend(coordinator: c, spec: spec, placement: try Placement(keys: keys, workers: ["good"], strategy: .roundRobin))
        let report = try BackendComparison(layers: 2, experts: 3).run(remote, InProcessExpertBackend(spec: spec, keys: keys), steps: 3)
        XCTAssertTrue(report.identical, report.description)
        c.shutdownWorkers(reason: "test over")
        XCTAssertEqual(exitStatus(good, within: 10), 0)
        pids = []
    }

    func testKeyFilesRoundTripAndRefuseBadFiles() throws {
        try XCTSkipUnless(ZMQContext.has("curve"), "libzmq without CURVE")
        let pair = try CurveKeyPair.generate()
        let files = try KeyFiles.write(pair, prefix: scratch + "/coordinator")
        XCTAssertEqual(try KeyFiles.readSecret(files.secretFile), pair)
        XCTAssertEqual(try KeyFiles.readPublic(files.publicFile), pair.publicKey)
        XCTAssertEqual(try KeyFiles.readAllowed(files.publicFile), [pair.publicKey: files.publicFile])
        var st = stat()
        stat(files.secretFile, &st)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "the secret key is owner-only")

        func reason(_ body: () throws -> Any) -> String {
            do { _ = try body(); return "no error" } catch { return "\(error)" }
        }
        // Existing files are kept unless forced.
        XCTAssertTrue(reason { try KeyFiles.write(try CurveKeyPair.generate(), prefix: self.scratch + "/coordinator") }.contains("--force"))
        XCTAssertEqual(try KeyFiles.readSecret(files.secretFile), pair, "a refused write changes nothing")
        // Too open, missing, swapped public/secret files.
        chmod(files.secretFile, 0o640)
        let open = reason { try KeyFiles.readSecret(files.secretFile) }
        XCTAssertTrue(open.contains("mode 0640") && open.contains("chmod 600"), open)
        chmod(files.secretFile, 0o600)
        XCTAssertTrue(reason { try KeyFiles.readSecret(self.scratch + "/missing.key") }.contains("missing.key: cannot read it: No such file"))
        XCTAssertTrue(reason { try KeyFiles.readSecret(files.publicFile) }.contains("readable or writable by group or others"),
                      "a .pub file (mode 0644) given as the secret key")
        chmod(files.publicFile, 0o600)
        XCTAssertTrue(reason { try KeyFiles.readSecret(files.publicFile) }.contains("is a public key file"))
        XCTAssertTrue(reason { try KeyFiles.readPublic(files.secretFile) }.contains("is a secret key file"))
        // Malformed keys name the file and line.
        let bad = scratch + "/stranger.pub"
        for (text, expected) in [("short\n", "40 characters"), (String(repeating: "~", count: 40) + "\n", "'~' is not Z85"),
                                 ("# only a comment\n", "holds no key"),
                                 (pair.publicKey + "\n" + pair.publicKey + "\n", "holds 2 keys")] {
            XCTAssertTrue(FileManager.default.createFile(atPath: bad, contents: Data(text.utf8)))
            let r = reason { try KeyFiles.readPublic(bad) }
            XCTAssertTrue(r.contains("stranger.pub") && r.contains(expected), "\(text): \(r)")
        }
        XCTAssertTrue(FileManager.default.createFile(atPath: bad, contents: Data("# keys\n\(pair.publicKey)\nnot-a-key\n".utf8)))
        XCTAssertTrue(reason { try KeyFiles.readAllowed(bad) }.contains("stranger.pub: line 3: malformed CURVE key"))
        XCTAssertEqual(mkdir(scratch + "/allowed", 0o700), 0)
        XCTAssertTrue(reason { try KeyFiles.readAllowed(self.scratch + "/allowed") }.contains("holds no *.pub public key files"))
        XCTAssertThrowsError(try CurveKeyPair(secretKey: "too short"))
    }

    func testBindingBeyondLoopbackNeedsKeysOrInsecure() throws {
        for e in ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://node-1:5555"] {
            XCTAssertTrue(LinkPolicy.reachesOtherMachines(e), e)
            XCTAssertThrowsError(try LinkPolicy.check(bind: e, secured: false, insecure: false)) { error in
                XCTAssertTrue("\(error)".contains("--insecure") && "\(error)".contains("--server-key"), "\(error)")
            }
            XCTAssertNoThrow(try LinkPolicy.check(bind: e, secured: true, insecure: false))
            XCTAssertNoThrow(try LinkPolicy.check(bind: e, secured: false, insecure: true))
        }
        for e in ["tcp://127.0.0.1:5555", "tcp://127.1.2.3:*", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/thor.sock"] {
            XCTAssertFalse(LinkPolicy.reachesOtherMachines(e), e)
            XCTAssertNoThrow(try LinkPolicy.check(bind: e, secured: false, insecure: false))
        }
    }
}
