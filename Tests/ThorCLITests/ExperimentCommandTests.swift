import XCTest
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// `thor experiment paper --quick` end to end on a small slice of the built-in corpus.
final class ExperimentCommandTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-experiment-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    static let labels = ["top-2", "top-p", "THOR top-p", "THOR top-p w/o task level", "THOR top-p w/o context gate", "dense"]
    static let ids = ["top2", "topp", "thor-topp", "no-task-level", "no-context", "dense"]
    /// A few steps on a smaller slice than --quick's own.
    static let slice = ["--set", "training.max_steps=8", "--set", "data.synthetic_pairs=400",
                        "--set", "data.synthetic_eval_pairs_per_task=4", "--set", "data.vocabulary_size=300",
                        "--set", "evaluation.max_output_length=16", "--no-progress"]

    /// An attribute's value (`attribute(forName:)` misses attributes under a default namespace on Linux).
    func attribute(_ e: XMLElement, _ name: String) -> String? { e.attributes?.first { $0.name == name }?.stringValue }

    /// The `<g class="series">` elements of an SVG file (which must parse as XML), in document order.
    func seriesGroups(_ path: String) throws -> [XMLElement] {
        let doc = try XMLDocument(contentsOf: URL(fileURLWithPath: path), options: [])
        var found: [XMLElement] = []
        func walk(_ e: XMLElement) {
            if e.localName == "g", attribute(e, "class") == "series" { found.append(e) }
            for case let child as XMLElement in e.children ?? [] { walk(child) }
        }
        if let root = doc.rootElement() { XCTAssertEqual(root.localName, "svg"); walk(root) }
        return found
    }

    func seriesNames(_ path: String) throws -> [String] {
        try seriesGroups(path).compactMap { attribute($0, "data-series") }
    }

    func testQuickSweepWritesReportAndResumes() throws {
        let out = scratch + "/paper"
        let first = try Thor.run(["experiment", "paper", "--quick", "--out", out] + Self.slice)
        XCTAssertEqual(first.status, 0, first.stderr)
        let report = try String(contentsOfFile: out + "/report.md", encoding: .utf8)
        for label in Self.labels {
            XCTAssertTrue(report.contains("| \(label) |"), "report.md lacks a row for \(label):\n\(report)")
            XCTAssertTrue(first.stdout.contains(label), first.stdout)
        }
        for section in ["BLEU per task and average", "Experts per token per task", "Experts per token per MoE layer",
                        "Task × predicted task", "Task × expert usage per MoE layer", "`encoder.layers.1.moe`"] {
            XCTAssertTrue(report.contains(section), "report.md lacks \(section)")
        }
        // Both plots are XML with one series per variant, in report order.
        XCTAssertEqual(try seriesNames(out + "/bleu.svg"), Self.labels)
        XCTAssertEqual(try seriesNames(out + "/experts-per-layer.svg").map { $0.replacingOccurrences(of: " (no values)", with: "") },
                       Self.labels)
        // The BLEU plot draws one bar per task and the average for every variant.
        for g in try seriesGroups(out + "/bleu.svg") {
            let bars = (g.children ?? []).compactMap { $0 as? XMLElement }.filter { $0.localName == "rect" && $0.childCount > 0 }
            XCTAssertEqual(bars.count, 5, "one bar per task and the average")
        }
        // Progress goes to stderr.
        XCTAssertTrue(first.stderr.contains("[6/6] dense"), first.stderr)

        // Resume: a finished sweep trains nothing; a variant without its result is trained again, alone.
        let results = Self.ids.map { out + "/\($0)/result.json" }
        let before = try results.map { try String(contentsOfFile: $0, encoding: .utf8) }
        try FileManager.default.removeItem(atPath: out + "/no-context/result.json")
        let second = try Thor.run(["experiment", "paper", "--quick", "--out", out] + Self.slice)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("skipping them"), second.stderr)
        XCTAssertTrue(second.stderr.contains("[5/6] THOR top-p w/o context gate"), second.stderr)
        for (i, id) in Self.ids.enumerated() where id != "no-context" {
            XCTAssertFalse(second.stderr.contains("[\(i + 1)/6]"), "\(id) was trained again:\n\(second.stderr)")
            XCTAssertEqual(try String(contentsOfFile: results[i], encoding: .utf8), before[i], "\(id)'s result changed")
        }
        // The retrained variant gives the same figures (same seed, same configuration): the result is reproducible.
        let again = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: results[4]))) as! [String: Any]
        let old = try JSONSerialization.jsonObject(with: Data(before[4].utf8)) as! [String: Any]
        XCTAssertEqual(again["averageBLEU"] as? Double, old["averageBLEU"] as? Double)
        XCTAssertEqual(again["expertUsage"] as? [[[Double]]], old["expertUsage"] as? [[[Double]]])

        // Results of another configuration in --out are refused, not mixed into the report.
        let other = try Thor.run(["experiment", "paper", "--quick", "--out", out] + Self.slice + ["--set", "training.max_steps=9"])
        XCTAssertNotEqual(other.status, 0)
        XCTAssertTrue(other.stderr.contains("another configuration"), other.stderr)
    }

    func testBadFlagsAreRefusedBeforeAnyWork() throws {
        let out = scratch + "/x"
        let r1 = try Thor.run(["experiment", "paper", "--quick", "--out", out, "--variants", "top2,nope"])
        XCTAssertNotEqual(r1.status, 0)
        XCTAssertTrue(r1.stderr.contains("nope"), r1.stderr)
        let r2 = try Thor.run(["experiment", "paper", "--quick", "--out", out, "--corpus", scratch + "/missing"])
        XCTAssertNotEqual(r2.status, 0)
        XCTAssertTrue(r2.stderr.contains("--corpus"), r2.stderr)
        let r3 = try Thor.run(["experiment", "paper", "--quick", "--out", out, "--set", "routing.threshold=2"])
        XCTAssertNotEqual(r3.status, 0)
        XCTAssertTrue(r3.stderr.contains("routing.threshold"), r3.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a refused sweep must write nothing")
        let help = try Thor.run(["experiment", "paper", "--help"])
        XCTAssertTrue(help.stdout.contains("d = 64"), help.stdout)
    }
}
