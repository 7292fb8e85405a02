import XCTest
import Foundation
import ThorModel

final class ConfigurationTests: XCTestCase {
    func parse(_ json: String) throws -> ThorConfiguration { try ThorConfiguration(json: Data(json.utf8)) }

    func assertError(_ json: String, path: String, mentions: [String] = [], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(json), file: file, line: line) { error in
            guard let e = error as? ConfigurationError else { return XCTFail("not a ConfigurationError: \(error)", file: file, line: line) }
            XCTAssertEqual(e.path, path, "\(e)", file: file, line: line)
            for m in mentions { XCTAssertTrue(e.description.contains(m), "\(e) should mention \(m)", file: file, line: line) }
        }
    }

    func testDefaultsFromSpec() throws {
        let c = try parse("{}")
        XCTAssertEqual(c.routing.variant, .thorTopP)
        XCTAssertEqual(c.routing.experts, 8)
        XCTAssertEqual(c.routing.resolvedCandidates, 4)   // N/2
        XCTAssertEqual(c.routing.resolvedK, 2)
        XCTAssertEqual(c.routing.threshold, 0.5)
        XCTAssertEqual(c.routing.moeEvery, 2)
        XCTAssertNil(c.routing.capacityFactor)             // dropless
        XCTAssertEqual(c.losses, LossConfiguration(alpha: 0.01, beta: 0.01, gamma: 0.01, delta: 1e-4, labelSmoothing: 0.1))
        XCTAssertEqual(c.training.samplingTemperature, 1.5)
        XCTAssertEqual(c.training.adamBeta2, 0.98)
        XCTAssertEqual(c.model.dropout, 0.1)
        XCTAssertEqual((0..<6).filter(c.routing.isMoELayer), [1, 3, 5])
    }

    func testFullFileAndRoundTrip() throws {
        let c = try parse("""
        {"model": {"vocabulary_size": 8000, "model_dim": 512, "hidden_dim": 2048, "heads": 8,
                   "encoder_layers": 6, "decoder_layers": 6, "activation": "swiglu"},
         "routing": {"variant": "thor-topk", "experts": 32, "candidates": 8, "k": 2, "moe_every": 1,
                     "shared_experts": 1, "task_prior": true, "tasks": 5, "capacity_factor": 1.25},
         "losses": {"alpha": 0.02, "delta": 0},
         "training": {"learning_rate": 7e-4, "seed": 42, "workers": 4}}
        """)
        XCTAssertEqual(c.model.modelDim, 512); XCTAssertEqual(c.model.activation, .swiglu)
        XCTAssertEqual(c.routing.variant, .thorTopK); XCTAssertEqual(c.routing.resolvedCandidates, 8)
        XCTAssertEqual(c.routing.capacityFactor, 1.25); XCTAssertTrue(c.routing.taskPrior)
        XCTAssertEqual(c.losses.alpha, 0.02); XCTAssertEqual(c.losses.beta, 0.01)
        XCTAssertEqual(c.training.seed, 42)
        XCTAssertEqual((0..<6).filter(c.routing.isMoELayer), Array(0..<6))
        let again = try parse(c.jsonString)
        XCTAssertEqual(again, c)
    }

    func testEveryVariantParses() throws {
        for v in RoutingVariant.allCases {  // a variant that fails to parse is named and the others still run
            XCTAssertEqual(try parse(#"{"routing": {"variant": "\#(v.rawValue)", "tasks": 3}}"#).routing.variant, v, v.rawValue)
        }
        XCTAssertEqual(try parse(#"{"routing": {"variant": "top1"}}"#).routing.resolvedK, 1)
        XCTAssertEqual(try parse(#"{"routing": {"variant": "no-context"}}"#).routing.resolvedSelection, .topp)
    }

    func testUnknownKeysAtEveryLevel() {
        assertError(#"{"modle": {}}"#, path: "modle", mentions: ["unknown", "model", "routing"])
        assertError(#"{"routing": {"treshold": 0.5}}"#, path: "routing.treshold", mentions: ["threshold"])
        assertError(#"{"model": {"dim": 5}}"#, path: "model.dim", mentions: ["model_dim"])
        assertError(#"{"training": {"lr": 1}}"#, path: "training.lr", mentions: ["learning_rate"])
        assertError(#"{"losses": {"epsilon": 1}}"#, path: "losses.epsilon", mentions: ["label_smoothing"])
    }

    func testWrongTypes() {
        assertError(#"{"routing": {"experts": "eight"}}"#, path: "routing.experts", mentions: ["integer"])
        assertError(#"{"routing": {"experts": 2.5}}"#, path: "routing.experts", mentions: ["integer"])
        assertError(#"{"routing": {"threshold": "high"}}"#, path: "routing.threshold", mentions: ["number"])
        assertError(#"{"routing": {"task_prior": 1}}"#, path: "routing.task_prior", mentions: ["true or false"])
        assertError(#"{"routing": 3}"#, path: "routing", mentions: ["object"])
        assertError(#"{"routing": {"variant": "top3"}}"#, path: "routing.variant", mentions: ["thor-topp", "hard", "dense"])
        assertError(#"{"model": {"activation": "tanh"}}"#, path: "model.activation", mentions: ["relu", "gelu", "swiglu"])
        assertError("{not json", path: "")
    }

    func testImpossibleValues() {
        assertError(#"{"routing": {"experts": 4, "candidates": 5}}"#, path: "routing.candidates", mentions: ["1…experts (4)"])
        assertError(#"{"routing": {"threshold": 0}}"#, path: "routing.threshold", mentions: ["(0, 1]"])
        assertError(#"{"routing": {"threshold": 1.5}}"#, path: "routing.threshold", mentions: ["(0, 1]"])
        assertError(#"{"routing": {"variant": "thor-topk", "experts": 8, "candidates": 2, "k": 3}}"#, path: "routing.k", mentions: ["≤ candidates"])
        assertError(#"{"routing": {"variant": "top2", "experts": 8, "k": 3}}"#, path: "routing.k")
        assertError(#"{"routing": {"variant": "thor-topk", "k": 0}}"#, path: "routing.k", mentions: ["≥ 1"])
        assertError(#"{"routing": {"variant": "topp", "selection": "topk"}}"#, path: "routing.selection")
        assertError(#"{"routing": {"max_experts": 0}}"#, path: "routing.max_experts")
        assertError(#"{"routing": {"capacity_factor": -1}}"#, path: "routing.capacity_factor")
        assertError(#"{"routing": {"variant": "top2", "task_prior": true}}"#, path: "routing.task_prior")
        assertError(#"{"model": {"model_dim": 10, "heads": 4}}"#, path: "model.heads", mentions: ["divisible"])
        assertError(#"{"model": {"dropout": -0.1}}"#, path: "model.dropout", mentions: ["[0, 1)"])
        assertError(#"{"losses": {"gamma": -1}}"#, path: "losses.gamma")
        assertError(#"{"training": {"sampling_temperature": 0}}"#, path: "training.sampling_temperature")
        assertError(#"{"model": {"encoder_layers": 1}, "routing": {"moe_every": 2}}"#, path: "routing.moe_every")
    }

    func testOverrides() throws {
        let base = try parse("{}")
        let c = try base.applying(overrides: ["routing.threshold": "0.7", "routing.variant": "gold",
                                              "routing.max_experts": "3", "training.seed": "9", "routing.task_prior": "true"])
        XCTAssertEqual(c.routing.threshold, 0.7); XCTAssertEqual(c.routing.variant, .gold)
        XCTAssertEqual(c.routing.maxExperts, 3); XCTAssertEqual(c.training.seed, 9); XCTAssertTrue(c.routing.taskPrior)
        XCTAssertNil(try c.applying(overrides: ["routing.max_experts": "null"]).routing.maxExperts)
        XCTAssertThrowsError(try base.applying(overrides: ["routing.threshold": "1.5"])) { e in
            XCTAssertEqual((e as? ConfigurationError)?.path, "routing.threshold")
        }
        XCTAssertThrowsError(try base.applying(overrides: ["routing.thresh": "0.5"])) { e in
            XCTAssertEqual((e as? ConfigurationError)?.path, "routing.thresh")
        }
        XCTAssertThrowsError(try base.applying(overrides: ["threshold": "0.5"]))
        XCTAssertThrowsError(try base.applying(overrides: ["routing.experts": "many"])) { e in
            XCTAssertEqual((e as? ConfigurationError)?.path, "routing.experts")
        }
    }
}
