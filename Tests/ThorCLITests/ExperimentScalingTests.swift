import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// `thor experiment scaling` end to end on a tiny sweep over real worker processes, its resume,
/// its plots, and `thor experiment predict` from the cost model it wrote.
final class ExperimentScalingTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-scaling-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func attribute(_ e: XMLElement, _ name: String) -> String? { e.attributes?.first { $0.name == name }?.stringValue }

    /// The `data-series` names of an SVG file, which must parse as XML with an `<svg>` root.
    func seriesNames(_ path: String) throws -> [String] {
        let doc = try XMLDocument(contentsOf: URL(fileURLWithPath: path), options: [])
        let root = try XCTUnwrap(doc.rootElement())
        XCTAssertEqual(root.localName, "svg")
        var names: [String] = []
        func walk(_ e: XMLElement) {
            if e.localName == "g", attribute(e, "class") == "series", let n = attribute(e, "data-series") { names.append(n) }
            for case let c as XMLElement in e.children ?? [] { walk(c) }
        }
        walk(root)
        return names
    }

    static let tiny = ["experiment", "scaling", "--workers", "1,2", "--experts", "4", "--tokens", "64", "--width", "16",
                       "--repeats", "1"]

    func testTinySweepWritesResultsPlotsAndResumes() throws {
        let out = scratch + "/sweep"
        let first = try Thor.run(Self.tiny + ["--out", out, "--json"], timeout: 120)
        XCTAssertEqual(first.status, 0, first.stderr)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as? [String: Any], first.stdout)
        let configurations = try XCTUnwrap(obj["configurations"] as? [[String: Any]])
        XCTAssertEqual(configurations.map { $0["workers"] as? Int }, [1, 2])
        for c in configurations {
            let step = try XCTUnwrap(c["step_seconds"] as? Double)
            XCTAssertGreaterThan(step, 0)
            let phases = try XCTUnwrap(c["phases"] as? [String: Double])
            XCTAssertEqual(Set(phases.keys), ["attention", "routing", "combine", "encode", "wait", "decode", "optimizer", "other"])
            // The phases are parts of the step (measured inside it).
            XCTAssertLessThanOrEqual(phases.values.reduce(0, +), step * 1.0001)
            XCTAssertGreaterThan(phases["wait"]!, 0)
            XCTAssertGreaterThan(try XCTUnwrap(c["bytes_per_step"] as? Int), 0)
        }
        // Two configurations: nothing to hold out, and the JSON says so instead of a number.
        XCTAssertTrue(obj["cost_model_max_relative_error"] is NSNull, "\(obj)")
        XCTAssertTrue(first.stderr.contains("[2/2]"), first.stderr)

        // Results: 2 JSON lines and a CSV with a header and 2 rows; rates and the fitted model.
        let lines = try String(contentsOfFile: out + "/results.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        // Each worker's own timings came back on its replies: compute > 0, and `wait` splits into
        // the busiest worker's time and the wire (the two add up to wait).
        for line in lines {
            let r = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let workers = try XCTUnwrap(r["workers"] as? [[String: Any]])
            XCTAssertFalse(workers.isEmpty)
            for w in workers {
                XCTAssertGreaterThan(try XCTUnwrap(w["compute"] as? Double), 0, "\(w)")
                for k in ["decode", "queue", "encode"] { XCTAssertGreaterThanOrEqual(try XCTUnwrap(w[k] as? Double), 0, k) }
            }
            let wait = try XCTUnwrap((r["phases"] as? [String: Any])?["wait"] as? Double)
            let compute = try XCTUnwrap(r["wait_compute"] as? Double), wire = try XCTUnwrap(r["wait_wire"] as? Double)
            XCTAssertGreaterThan(compute, 0)
            XCTAssertGreaterThanOrEqual(wire, 0)
            XCTAssertEqual(compute + wire, wait, accuracy: 1e-9)
        }
        let csv = try String(contentsOfFile: out + "/results.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 3)
        XCTAssertTrue(csv[0].hasPrefix("key,workers,experts,tokens,width,transport,wire_dtype,replicas"), String(csv[0]))
        for f in ["rates.json", "cost-model.json"] { XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f) }

        // Every plot parses and holds the series it claims.
        let plots = try XCTUnwrap(obj["plots"] as? [String])
        XCTAssertEqual(plots.map { ($0 as NSString).lastPathComponent }, ["throughput.svg", "phases.svg", "expert-load.svg", "wire-bytes.svg"])
        XCTAssertEqual(try seriesNames(out + "/throughput.svg"), ["N4 n64 d16", "ideal: N4 n64 d16"])
        XCTAssertEqual(try seriesNames(out + "/phases.svg"), ["attention", "routing", "combine", "encode", "wait", "decode", "optimizer", "other"])
        XCTAssertEqual(try seriesNames(out + "/expert-load.svg"),
                       ["W1 N4 n64 d16 · layer 0", "W1 N4 n64 d16 · layer 1", "W2 N4 n64 d16 · layer 0", "W2 N4 n64 d16 · layer 1"])
        XCTAssertEqual(try seriesNames(out + "/wire-bytes.svg"), ["sent", "received"])

        // Again, with one more worker count: the two done configurations are skipped, one is added.
        let second = try Thor.run(["experiment", "scaling", "--workers", "1,2,3", "--experts", "4", "--tokens", "64", "--width", "16",
                                   "--repeats", "1", "--out", out], timeout: 120)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("resuming: 2 of 3"), second.stderr)
        XCTAssertTrue(second.stderr.contains("3 workers compute at once on"), second.stderr)
        XCTAssertEqual(try String(contentsOfFile: out + "/results.jsonl", encoding: .utf8).split(separator: "\n").count, 3)
        // Three configurations: the second is held out and predicted.
        XCTAssertTrue(second.stdout.contains("* W2 N4 n64 d16"), second.stdout)
        XCTAssertTrue(second.stdout.contains("cost_model_max_relative_error (held out)"), second.stdout)
        XCTAssertEqual(try seriesNames(out + "/cost-model.svg"), ["measured", "predicted"])

        // predict uses the fitted model and names a bottleneck.
        let p = try Thor.run(["experiment", "predict", "--workers", "512", "--nodes", "64", "--link", "100gbit,5us",
                              "--width", "16", "--experts", "4", "--model", out + "/cost-model.json", "--json"], timeout: 60)
        XCTAssertEqual(p.status, 0, p.stderr)
        let pred = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(p.stdout.utf8)) as? [String: Any], p.stdout)
        XCTAssertEqual(pred["fitted"] as? Bool, true)
        XCTAssertGreaterThan(try XCTUnwrap(pred["step_seconds"] as? Double), 0)
        XCTAssertTrue(["coordinator", "expert compute", "network", "optimizer"].contains(pred["bottleneck"] as? String ?? ""), "\(pred)")
    }

    /// `--transport netns` runs each worker on its own emulated node (a network namespace behind a
    /// veth link): the sweep measures that link's rate for the cost model and records the runs.
    func testSweepOverEmulatedNodes() throws {
        guard getuid() == 0 else { throw XCTSkip("emulated nodes need root") }
        guard ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].contains(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("emulated nodes need `ip` (Debian package iproute2)")
        }
        let out = scratch + "/netns"
        let r = try Thor.run(["experiment", "scaling", "--workers", "1,2", "--experts", "4", "--tokens", "64", "--width", "16",
                              "--repeats", "1", "--transport", "netns", "--out", out, "--json"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try String(contentsOfFile: out + "/results.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        for line in lines {
            let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertEqual((o["configuration"] as? [String: Any])?["transport"] as? String, "netns", "\(o)")
            XCTAssertGreaterThan(try XCTUnwrap(o["median_step_seconds"] as? Double), 0)
        }
        let rates = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/rates.json"))) as? [String: Any])
        let link = try XCTUnwrap((rates["links"] as? [String: Any])?["netns"] as? [String: Double], "the netns link was measured: \(rates)")
        XCTAssertGreaterThan(try XCTUnwrap(link["bandwidth"]), 0)
        XCTAssertGreaterThan(try XCTUnwrap(link["latency"]), 0)
    }

    func testBadSweepInputIsRefusedByName() throws {
        let out = scratch + "/bad"
        for (args, message) in [(["--wire-dtype", "f16"], "unknown dtype 'f16'"), (["--transport", "udp"], "unknown transport 'udp'"),
                                (["--workers", "0"], "--workers needs values ≥ 1"), (["--width", "10"], "--width must be multiples of 4"),
                                (["--experts", "four"], "'four' is not an integer")] {
            let r = try Thor.run(["experiment", "scaling", "--out", out] + args, timeout: 30)
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a refused sweep must not create its directory")
        let bad = try Thor.run(["experiment", "predict", "--workers", "8", "--link", "fast"], timeout: 30)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--link"), bad.stderr)
    }
}
