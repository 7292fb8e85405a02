import XCTest
import Foundation
import ThorTensor
import ThorModel
import ThorCluster
import ThorTraining

/// The whole run's configuration file: sections from three modules, overrides, round trip.
final class RunConfigurationTests: XCTestCase {
    func parse(_ json: String) throws -> ThorConfiguration { try ThorConfiguration(json: Data(json.utf8)) }

    func assertError(_ json: String, path: String, mentions: [String] = [], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(json), file: file, line: line) { error in
            guard let e = error as? ConfigurationError else { return XCTFail("not a ConfigurationError: \(error)", file: file, line: line) }
            XCTAssertEqual(e.path, path, "\(e)", file: file, line: line)
            for m in mentions { XCTAssertTrue(e.description.contains(m), "\(e) should mention \(m)", file: file, line: line) }
        }
    }

    func testDefaults() throws {
        let c = try parse("{}")
        XCTAssertEqual(c, ThorConfiguration())
        XCTAssertEqual(c.training.samplingTemperature, 1.5)
        XCTAssertEqual(c.training.adamBeta2, 0.98)
        XCTAssertEqual(c.cluster.workers, 2); XCTAssertEqual(c.cluster.expertThreads, 2)
        XCTAssertEqual(c.data.vocabularySize, 1000); XCTAssertEqual(c.evaluation.beamSize, 1)
        XCTAssertEqual(ThorConfiguration.keys, ["model", "routing", "losses", "training", "data", "evaluation", "cluster"])
    }

    func testFullFileAndRoundTrip() throws {
        let c = try parse("""
        {"model": {"model_dim": 512, "hidden_dim": 2048, "heads": 8, "activation": "swiglu"},
         "routing": {"variant": "thor-topk", "experts": 32, "candidates": 8, "capacity_factor": 1.25},
         "losses": {"alpha": 0.02, "delta": 0},
         "training": {"learning_rate": 7e-4, "seed": 42, "adam_epsilon": 1e-9},
         "data": {"vocabulary_size": 2000},
         "evaluation": {"beam_size": 4, "length_penalty": 0.6},
         "cluster": {"workers": 4, "expert_threads": 3}}
        """)
        XCTAssertEqual(c.training.seed, 42); XCTAssertEqual(c.training.learningRate, 7e-4)
        XCTAssertEqual(c.cluster.workers, 4); XCTAssertEqual(c.cluster.expertThreads, 3)
        XCTAssertEqual(c.evaluation.lengthPenalty, 0.6)
        XCTAssertEqual(try parse(c.jsonString), c)
        XCTAssertEqual(try parse(ThorConfiguration.quickstart.jsonString), ThorConfiguration.quickstart)
        XCTAssertTrue(ThorConfiguration.quickstart.jsonString.contains("\"learning_rate\": 0.002"))
    }

    func testRunSectionErrors() {
        assertError(#"{"training": {"lr": 1}}"#, path: "training.lr", mentions: ["learning_rate"])
        assertError(#"{"training": {"workers": 2}}"#, path: "training.workers", mentions: ["unknown"])
        assertError(#"{"cluster": {"worker": 2}}"#, path: "cluster.worker", mentions: ["workers", "expert_threads"])
        assertError(#"{"cluster": {"workers": -1}}"#, path: "cluster.workers", mentions: ["≥ 0"])
        assertError(#"{"cluster": {"expert_threads": 0}}"#, path: "cluster.expert_threads")
        assertError(#"{"training": {"sampling_temperature": 0}}"#, path: "training.sampling_temperature")
        assertError(#"{"training": {"seed": -1}}"#, path: "training.seed", mentions: ["0…"])
        assertError(#"{"training": {"max_steps": 1e30}}"#, path: "training.max_steps", mentions: ["too large"])
        assertError(#"{"data": {"vocabulary_size": 10}}"#, path: "data.vocabulary_size")
        assertError(#"{"data": {"train": "a.tsv"}}"#, path: "data.dev")
        assertError(#"{"evaluation": {"beam_size": 0}}"#, path: "evaluation.beam_size")
        assertError(#"{"model": {"encoder_layers": 1}, "routing": {"moe_every": 2}}"#, path: "routing.moe_every")
        assertError(#"{"training": {"seed": 1, "seed": 2}}"#, path: "training.seed", mentions: ["duplicate"])
        assertError(#"{"training": {"seed": 1,}}"#, path: "", mentions: ["trailing comma"])
    }

    func testReadingAFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thor-config-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try #"{"cluster": {"workers": 3}}"#.write(toFile: dir + "/c.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(try ThorConfiguration(contentsOf: dir + "/c.json").cluster.workers, 3)
        XCTAssertThrowsError(try ThorConfiguration(contentsOf: dir)) { XCTAssertTrue("\($0)".contains("a directory"), "\($0)") }
        XCTAssertThrowsError(try ThorConfiguration(contentsOf: dir + "/none.json")) { XCTAssertTrue("\($0)".contains("no such file"), "\($0)") }
    }

    func testOverrides() throws {
        let base = try parse("{}")
        let c = try base.applying(overrides: ["routing.threshold": "0.7", "routing.variant": "gold", "cluster.workers": "5",
                                              "routing.max_experts": "3", "training.seed": "9", "routing.task_prior": "true"])
        XCTAssertEqual(c.routing.threshold, 0.7); XCTAssertEqual(c.routing.variant, .gold)
        XCTAssertEqual(c.routing.maxExperts, 3); XCTAssertEqual(c.training.seed, 9); XCTAssertEqual(c.routing.taskPrior, true)
        XCTAssertEqual(c.cluster.workers, 5)
        XCTAssertNil(try c.applying(overrides: ["routing.max_experts": "null"]).routing.maxExperts)
        XCTAssertThrowsError(try base.applying(overrides: ["routing.threshold": "1.5"])) { e in
            XCTAssertEqual((e as? ConfigurationError)?.path, "routing.threshold")
            XCTAssertTrue("\(e)".contains("got 1.5"), "\(e)")
        }
        XCTAssertThrowsError(try base.applying(overrides: ["routing.thresh": "0.5"])) { e in
            XCTAssertEqual((e as? ConfigurationError)?.path, "routing.thresh")
        }
        XCTAssertThrowsError(try base.applying(overrides: ["threshold": "0.5"]))
        XCTAssertThrowsError(try base.applying(overrides: ["routing.experts": "many"])) { e in
            XCTAssertEqual((e as? ConfigurationError)?.path, "routing.experts")
        }
        XCTAssertEqual(try ThorConfiguration.overrides(["a.b=c=d"]), ["a.b": "c=d"])
        XCTAssertThrowsError(try ThorConfiguration.overrides(["a.b"]))
    }

    func testDifferencesNameEachKey() throws {
        let a = ThorConfiguration.quickstart
        let b = try a.applying(overrides: ["model.model_dim": "128", "routing.experts": "4", "training.max_steps": "5"])
        XCTAssertEqual(b.differences(from: a), ["model.model_dim", "routing.experts", "training.max_steps"])
        XCTAssertEqual(a.differences(from: a), [])
    }
}
