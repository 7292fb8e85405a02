import XCTest
import Foundation
import ThorTensor
import ThorCluster
import ThorTraining
#if canImport(Glibc)
import Glibc
#endif

/// A distributed training run times its phases (coordinator and workers), writes them to
/// metrics.jsonl, serves them live with `--metrics-port`, and ends with the same bits as a run
/// that does not serve them.
final class PhaseMetricsTests: XCTestCase {
    var scratch = ""

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-phases-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func options(_ name: String, metricsPort: Int? = nil) -> TrainingRun.Options {
        var c = tinyConfiguration(workers: 2)
        c.training.maxSteps = 6
        c.training.logInterval = 3
        c.training.devInterval = 0
        c.training.checkpointInterval = 0
        var o = TrainingRun.Options(configuration: c)
        o.saveDirectory = scratch + "/" + name
        o.evaluateAtEnd = false
        o.metricsPort = metricsPort
        return o
    }

    func quiet(_ run: TrainingRun) { run.info = { _ in }; run.result = { _ in } }

    func records(_ name: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: scratch + "/\(name)/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
    }

    func testDistributedRunLogsAndServesMeasuredPhasesWithoutChangingResults() throws {
        // With live metrics, scraped during the run (from the step callback: the endpoint answers
        // on its own thread while the training thread waits for the reply).
        let served = TrainingRun(options: options("served", metricsPort: 0))
        quiet(served)
        var port = 0
        var scrapes: [Int: String] = [:]
        served.onMetricsEndpoint = { port = $0.port }
        served.onStep = { p in
            if p.step == 2 || p.step == 5 { scrapes[p.step] = try? httpGet(port: port, path: "/metrics") }
        }
        let a = try served.run()
        XCTAssertGreaterThan(port, 0)

        // The scrapes parse as Prometheus text; the step counter grew between them.
        let early = try parsePrometheus(try XCTUnwrap(scrapes[2], "no scrape at step 2"))
        let late = try parsePrometheus(try XCTUnwrap(scrapes[5], "no scrape at step 5"))
        XCTAssertEqual(early["thor_train_step"], 2)
        XCTAssertEqual(late["thor_train_step"], 5)
        for phase in ["attention", "routing", "experts", "wait", "combine", "optimizer", "grad_norm"] {
            XCTAssertNotNil(late["thor_phase_seconds_total{phase=\"\(phase)\"}"], phase)
        }
        XCTAssertGreaterThan(late["thor_phase_seconds_total{phase=\"wait\"}"] ?? 0, early["thor_phase_seconds_total{phase=\"wait\"}"] ?? .infinity)
        let up = late.filter { $0.key.hasPrefix("thor_worker_up{") }
        XCTAssertEqual(up.count, 2, "one liveness series per worker: \(up)")
        XCTAssertTrue(up.values.allSatisfy { $0 == 1 })
        let compute = late.filter { $0.key.hasPrefix("thor_worker_phase_seconds_total{") && $0.key.contains("phase=\"compute\"") }
        XCTAssertEqual(compute.count, 2)
        XCTAssertTrue(compute.values.allSatisfy { $0 > 0 }, "\(compute)")
        XCTAssertNotNil(late["thor_train_loss{term=\"total\"}"])
        XCTAssertNotNil(late["thor_train_tokens_per_second"], "a log window closed at step 3")
        XCTAssertNotNil(late["thor_experts_per_token"])
        XCTAssertTrue(late.keys.contains { $0.hasPrefix("thor_expert_load{layer=\"0\",expert=\"0\"}") })

        // metrics.jsonl: a phase summary per log window, with the workers' measured compute.
        let train = try records("served").filter { $0["split"] as? String == "train" }
        XCTAssertEqual(train.count, 2)
        for r in train {
            let phases = try XCTUnwrap(r["phase_s"] as? [String: Double])
            XCTAssertEqual(Set(phases.keys), Set(Phase.allCases.map(\.name)))
            XCTAssertGreaterThan(phases["attention"]!, 0)
            XCTAssertGreaterThan(phases["wait"]!, 0)
            XCTAssertGreaterThan(phases["wait_backward"]!, 0)
            XCTAssertGreaterThan(phases["optimizer"]!, 0)
            XCTAssertLessThanOrEqual(phases["wait"]!, phases["experts"]!, "the exchange is part of the experts' call")
            let stepSeconds = try XCTUnwrap(r["step_s"] as? Double)
            let forward = ["attention", "routing", "gather", "experts", "combine"].reduce(0) { $0 + phases[$1]! }
            XCTAssertLessThan(forward, stepSeconds, "the forward's sections fit in the step")
            let workers = try XCTUnwrap(r["worker_phase_s"] as? [String: [String: Double]])
            XCTAssertEqual(workers.count, 2)
            for (w, t) in workers {
                XCTAssertGreaterThan(t["compute"]!, 0, w)
                XCTAssertGreaterThan(t["timed_replies"]!, 0, w)
                XCTAssertEqual(t["timed_replies"], t["replies"], "every reply of a current worker is timed")
                XCTAssertLessThan(t["compute"]!, phases["wait"]! + phases["wait_backward"]! + phases["grad_norm"]! + phases["optimizer"]!,
                                  "a worker's compute happens while the coordinator waits")
            }
        }

        // The same run without the endpoint ends with the same bits (every checkpoint file's SHA-256).
        let plain = TrainingRun(options: options("plain"))
        quiet(plain)
        let b = try plain.run()
        XCTAssertEqual(a.finalLoss.bitPattern, b.finalLoss.bitPattern)
        let manifestA = try String(contentsOfFile: scratch + "/served/checkpoint-6/manifest.json", encoding: .utf8)
        let manifestB = try String(contentsOfFile: scratch + "/plain/checkpoint-6/manifest.json", encoding: .utf8)
        XCTAssertEqual(manifestA, manifestB)
        let lossesA = try records("served").compactMap { $0["loss"] as? Double }
        let lossesB = try records("plain").compactMap { $0["loss"] as? Double }
        XCTAssertEqual(lossesA, lossesB)
    }

    /// A port that is taken is refused with a clear error, before anything starts or is written.
    func testPortInUseIsAClearError() throws {
        let first = try MetricsEndpoint(port: 0)
        defer { first.stop() }
        let run = TrainingRun(options: options("busy", metricsPort: first.port))
        quiet(run)
        XCTAssertThrowsError(try run.run()) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("\(first.port)") && text.contains("already in use"), text)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/busy"), "nothing written")
        XCTAssertThrowsError(try MetricsEndpoint(address: "localhost:1", port: 0)) { error in
            XCTAssertTrue("\(error)".contains("not an IPv4 address"), "\(error)")
        }
        // Anything but /metrics is 404.
        XCTAssertTrue(try httpGet(port: first.port, path: "/other").isEmpty)
        first.publish("thor_train_step 3\n")
        XCTAssertEqual(try httpGet(port: first.port, path: "/metrics"), "thor_train_step 3\n")
    }
}

/// `GET path` from 127.0.0.1:`port`: the body of a 200 response, "" for any other status.
func httpGet(port: Int, path: String) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard ok == 0 else { throw POSIXError(.ECONNREFUSED) }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, 0) }
    var response = [UInt8](), chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &chunk, chunk.count, 0)
        if n <= 0 { break }
        response += chunk[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard text.hasPrefix("HTTP/1.0 200"), let split = text.range(of: "\r\n\r\n") else { return "" }
    return String(text[split.upperBound...])
}

/// Parses the Prometheus text format into `name{labels}` → value; throws on a malformed line.
func parsePrometheus(_ text: String) throws -> [String: Double] {
    var out: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " ") else { throw POSIXError(.EINVAL) }
        let key = String(line[..<space]), raw = String(line[line.index(after: space)...])
        let value: Double?
        switch raw {
        case "NaN": value = .nan
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        default: value = Double(raw)
        }
        guard let v = value, !key.isEmpty, key.first!.isLetter else {
            XCTFail("malformed Prometheus line: \(line)")
            throw POSIXError(.EINVAL)
        }
        if key.contains("{") { XCTAssertTrue(key.hasSuffix("}"), "labels of \(key)") }
        out[key] = v
    }
    return out
}
