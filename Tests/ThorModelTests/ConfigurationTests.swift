import XCTest
import Foundation
import ThorTensor
import ThorModel

/// The model's sections of a configuration file, read the way `ThorConfiguration` reads them.
struct ModelSections: ConfigurationSection {
    var model = TransformerConfiguration()
    var routing = RoutingConfiguration()
    var losses = LossConfiguration()
    init() {}
    enum CodingKeys: String, CodingKey, CaseIterable { case model, routing, losses }
    func validate(path: String) throws {
        try model.validate(path: "model"); try routing.validate(path: "routing"); try losses.validate(path: "losses")
    }
}

final class ConfigurationTests: XCTestCase {
    func parse(_ json: String) throws -> ModelSections {
        let c = try ModelSections.read(JSONValue.parse(Data(json.utf8)), path: "")
        try c.validate(path: "")
        return c
    }

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
        XCTAssertEqual(c.losses.alpha, 0.01); XCTAssertEqual(c.losses.beta, 0.01); XCTAssertEqual(c.losses.gamma, 0.01)
        XCTAssertEqual(c.losses.delta, 1e-4); XCTAssertEqual(c.losses.labelSmoothing, 0.1)
        XCTAssertEqual(c.model.dropout, 0.1)
        XCTAssertEqual(c.model.vocabularySize, 0)
        XCTAssertEqual((0..<6).filter(c.routing.isMoELayer), [1, 3, 5])
        XCTAssertEqual(c.routing.taskWarmupSteps, 0)        // the task level routes from step 1
    }

    /// The convenience initializers take their defaults from the one place they are written.
    func testInitializersShareTheDefaults() throws {
        XCTAssertEqual(LossConfiguration(alpha: 0.5).beta, LossConfiguration().beta)
        XCTAssertEqual(LossConfiguration(alpha: LossConfiguration().alpha), LossConfiguration())
        XCTAssertEqual(TransformerConfiguration(vocabularySize: 0), TransformerConfiguration())
        XCTAssertEqual(RoutingConfiguration(variant: .thorTopP), RoutingConfiguration())
        XCTAssertEqual(try parse("{}").losses, LossConfiguration())
        XCTAssertEqual(LossConfiguration.keys, ["alpha", "beta", "gamma", "delta", "label_smoothing"])
    }

    func testFullSectionsAndRoundTrip() throws {
        let c = try parse("""
        {"model": {"vocabulary_size": 8000, "model_dim": 512, "hidden_dim": 2048, "heads": 8,
                   "encoder_layers": 6, "decoder_layers": 6, "activation": "swiglu"},
         "routing": {"variant": "thor-topk", "experts": 32, "candidates": 8, "k": 2, "moe_every": 1,
                     "shared_experts": 1, "task_prior": true, "tasks": 5, "capacity_factor": 1.25,
                     "task_warmup_steps": 300},
         "losses": {"alpha": 0.02, "delta": 0}}
        """)
        XCTAssertEqual(c.model.modelDim, 512); XCTAssertEqual(c.model.activation, .swiglu)
        XCTAssertEqual(c.routing.variant, .thorTopK); XCTAssertEqual(c.routing.resolvedCandidates, 8)
        XCTAssertEqual(c.routing.capacityFactor, 1.25); XCTAssertEqual(c.routing.taskPrior, true)
        XCTAssertEqual(c.routing.taskWarmupSteps, 300)
        XCTAssertEqual(c.losses.alpha, 0.02); XCTAssertEqual(c.losses.beta, 0.01)
        XCTAssertEqual((0..<6).filter(c.routing.isMoELayer), Array(0..<6))
        XCTAssertEqual(try parse(c.jsonValue.serialized()), c)
        // null means "the default"
        XCTAssertEqual(try parse(#"{"routing": {"threshold": null, "max_experts": null}}"#).routing, RoutingConfiguration())
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
        assertError(#"{"losses": {"epsilon": 1}}"#, path: "losses.epsilon", mentions: ["label_smoothing"])
    }

    func testWrongTypes() {
        assertError(#"{"routing": {"experts": "eight"}}"#, path: "routing.experts", mentions: ["integer", "\"eight\""])
        assertError(#"{"routing": {"experts": 2.5}}"#, path: "routing.experts", mentions: ["integer", "2.5"])
        assertError(#"{"routing": {"threshold": "high"}}"#, path: "routing.threshold", mentions: ["number"])
        assertError(#"{"routing": {"task_prior": 1}}"#, path: "routing.task_prior", mentions: ["true or false"])
        assertError(#"{"routing": {"candidates": [4]}}"#, path: "routing.candidates", mentions: ["integer", "an array"])
        assertError(#"{"routing": 3}"#, path: "routing", mentions: ["object"])
        assertError(#"{"routing": {"variant": "top3"}}"#, path: "routing.variant", mentions: ["thor-topp", "hard", "dense"])
        assertError(#"{"routing": {"selection": 2}}"#, path: "routing.selection", mentions: ["string"])
        assertError(#"{"model": {"activation": "tanh"}}"#, path: "model.activation", mentions: ["relu", "gelu", "swiglu"])
        assertError("{not json", path: "")
    }

    /// Issue 9: an integer too large said "must be an integer, got an integer".
    func testIntegerTooLargeSaysSo() {
        for text in ["1e20", "100000000000000000000", "9007199254740993"] {
            XCTAssertThrowsError(try parse(#"{"model": {"model_dim": \#(text)}}"#)) { error in
                let e = error as? ConfigurationError
                XCTAssertEqual(e?.path, "model.model_dim")
                XCTAssertFalse("\(error)".contains("got an integer"), "\(error)")
                XCTAssertTrue("\(error)".contains("must be an integer in"), "\(error)")
            }
        }
        assertError(#"{"model": {"model_dim": -1e300}}"#, path: "model.model_dim", mentions: ["too large"])
        assertError(#"{"losses": {"alpha": 1e300}}"#, path: "losses.alpha", mentions: ["±3.4e38"])
    }

    func testImpossibleValues() {
        assertError(#"{"routing": {"experts": 4, "candidates": 5}}"#, path: "routing.candidates", mentions: ["1…experts (4)"])
        assertError(#"{"routing": {"threshold": 0}}"#, path: "routing.threshold", mentions: ["(0, 1]"])
        assertError(#"{"routing": {"threshold": 1.5}}"#, path: "routing.threshold", mentions: ["(0, 1]", "1.5"])
        assertError(#"{"routing": {"variant": "thor-topk", "experts": 8, "candidates": 2, "k": 3}}"#, path: "routing.k", mentions: ["≤ candidates"])
        assertError(#"{"routing": {"variant": "top2", "experts": 8, "k": 3}}"#, path: "routing.k")
        assertError(#"{"routing": {"variant": "thor-topk", "k": 0}}"#, path: "routing.k", mentions: ["≥ 1"])
        assertError(#"{"routing": {"variant": "topp", "selection": "topk"}}"#, path: "routing.selection")
        assertError(#"{"routing": {"max_experts": 0}}"#, path: "routing.max_experts")
        assertError(#"{"routing": {"capacity_factor": -1}}"#, path: "routing.capacity_factor")
        assertError(#"{"routing": {"variant": "top2", "task_prior": true}}"#, path: "routing.task_prior")
        assertError(#"{"routing": {"context_norm": "layernorm"}}"#, path: "routing.context_norm", mentions: ["none", "match-state"])
        assertError(#"{"routing": {"context_norm": true}}"#, path: "routing.context_norm")
        assertError(#"{"routing": {"variant": "no-context", "context_norm": "match-state"}}"#, path: "routing.context_norm",
                    mentions: ["context gate", "no-context"])
        assertError(#"{"routing": {"variant": "topp", "context_norm": "match-state"}}"#, path: "routing.context_norm", mentions: ["topp"])
        XCTAssertEqual(try parse(#"{"routing": {"variant": "no-task-level", "context_norm": "match-state"}}"#).routing.contextNorm, .matchState)
        XCTAssertEqual(try parse(#"{"routing": {"variant": "topp", "context_norm": "none"}}"#).routing.contextNorm, .none)
        XCTAssertEqual(try parse("{}").routing.contextNorm, ContextNormalization.none)
        assertError(#"{"routing": {"task_warmup_steps": -1}}"#, path: "routing.task_warmup_steps", mentions: ["≥ 0", "-1"])
        assertError(#"{"routing": {"variant": "no-task-level", "task_warmup_steps": 100}}"#, path: "routing.task_warmup_steps",
                    mentions: ["task-level mask", "no-task-level"])
        assertError(#"{"model": {"model_dim": 10, "heads": 4}}"#, path: "model.heads", mentions: ["divisible"])
        assertError(#"{"model": {"dropout": -0.1}}"#, path: "model.dropout", mentions: ["[0, 1)"])
        assertError(#"{"losses": {"gamma": -1}}"#, path: "losses.gamma")
    }

    /// Issue 9: the JSON reader accepted trailing commas and kept one of two duplicate keys.
    func testStrictJSON() {
        assertError(#"{"routing": {"experts": 4,}}"#, path: "", mentions: ["trailing comma", "line 1"])
        assertError(#"{"routing": {"experts": 4},}"#, path: "", mentions: ["trailing comma"])
        assertError(#"{"model": {"model_dim": 64}, "x": [1, 2,]}"#, path: "", mentions: ["trailing comma"])
        assertError("{\"routing\": {\"threshold\": 0.5,\n  \"threshold\": 0.7}}", path: "routing.threshold",
                    mentions: ["duplicate key `routing.threshold`", "line 2"])
        assertError(#"{"routing": {}, "routing": {}}"#, path: "routing", mentions: ["duplicate"])
        assertError(#"{"routing": {"experts": 4}} // comment"#, path: "", mentions: ["after the JSON document"])
        assertError(#"{"routing": {"experts": 04}}"#, path: "", mentions: ["leading zero"])
        assertError(#"{"routing": {"threshold": NaN}}"#, path: "", mentions: ["expected a value"])
        assertError(#"{'routing': {}}"#, path: "", mentions: ["double quotes"])
        assertError(#"{"routing": {"experts": 4}"#, path: "", mentions: ["end of file"])
        XCTAssertEqual(try StrictJSONParser.parse(Data(#"{"a": "\u00e9\ud83d\ude00\n", "b": [-0.5e-3, true, null]}"#.utf8)),
                       .object(["a": .string("é😀\n"), "b": .array([.number(-0.5e-3), .bool(true), .null])]))
    }
}
