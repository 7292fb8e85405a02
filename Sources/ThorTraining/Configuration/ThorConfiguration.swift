import Foundation
import ThorTensor
import ThorModel
import ThorCluster

/// A whole run's configuration: one JSON file with sections `model`, `routing`, `losses`
/// (ThorModel), `training`, `data`, `evaluation` (ThorTraining) and `cluster` (ThorCluster).
///
/// Every key is optional (`model.vocabulary_size` and `routing.tasks` 0 are filled in from
/// the data). Reading rejects malformed JSON (trailing commas and duplicate keys included),
/// unknown keys, wrong types and impossible values with a `ConfigurationError` that names the
/// key path. See docs/configuration.md.
public struct ThorConfiguration: ConfigurationSection {
    public var model = TransformerConfiguration()
    public var routing = RoutingConfiguration()
    public var losses = LossConfiguration()
    public var training = TrainingConfiguration()
    public var data = DataConfiguration()
    public var evaluation = EvaluationConfiguration()
    public var cluster = ClusterConfiguration()

    public init() {}

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case model, routing, losses, training, data, evaluation, cluster
    }

    /// Reads and validates a configuration from JSON text.
    public init(json data: Data) throws {
        try self.init(value: JSONValue.parse(data))
    }

    /// Reads and validates a configuration file.
    public init(contentsOf path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigurationError(path: "", message: "no such file: \(path)")
        }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(path: "", message: "cannot read \(path)\(isDirectory.boolValue ? " (a directory)" : "")")
        }
        try self.init(json: data)
    }

    /// Reads and validates a parsed JSON document.
    public init(value: JSONValue) throws {
        self = try Self.read(value, path: "")
        try validate()
    }

    /// JSON text of the whole configuration (sorted keys), readable by `init(json:)`.
    public var jsonString: String { jsonValue.serialized() + "\n" }

    /// Parses `section.key=value` override arguments (as given to `--set`).
    public static func overrides(_ arguments: [String]) throws -> [String: String] {
        var o: [String: String] = [:]
        for s in arguments {
            guard let eq = s.firstIndex(of: "=") else {
                throw ConfigurationError(path: "", message: "an override is section.key=value, got '\(s)'")
            }
            o[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        return o
    }

    /// A copy with `overrides` applied (key path → value text, e.g. `"routing.threshold": "0.7"`,
    /// `"routing.max_experts": "null"`), then re-read and re-validated as a whole.
    /// Values are parsed as JSON when they parse, else taken as strings.
    public func applying(overrides: [String: String]) throws -> ThorConfiguration {
        guard case .object(var root) = jsonValue else { fatalError("configuration serializes to an object") }
        let sections = Self.keys.joined(separator: ", ")
        for path in overrides.keys.sorted() {
            let parts = path.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2 else {
                throw ConfigurationError(path: path, message: "an override names `section.key` (sections: \(sections))")
            }
            guard case .object(var section)? = root[parts[0]] else {
                throw ConfigurationError(path: path, message: "unknown section `\(parts[0])`; allowed: \(sections)")
            }
            section[parts[1]] = JSONValue.parseScalar(overrides[path]!)
            root[parts[0]] = .object(section)
        }
        return try ThorConfiguration(value: .object(root))
    }

    /// The key paths (`model.model_dim`) whose values differ between two configurations, sorted.
    public func differences(from other: ThorConfiguration) -> [String] {
        guard case .object(let a) = jsonValue, case .object(let b) = other.jsonValue else { return [] }
        var out: [String] = []
        for section in Self.keys {
            guard case .object(let x)? = a[section], case .object(let y)? = b[section] else { continue }
            for key in Set(x.keys).union(y.keys).sorted() where x[key] != y[key] { out.append("\(section).\(key)") }
        }
        return out
    }

    /// The value at a `section.key` path, as it would appear in a file (`absent` when unset).
    public func value(at path: String) -> String {
        let parts = path.split(separator: ".").map(String.init)
        guard parts.count == 2, case .object(let root) = jsonValue, case .object(let section)? = root[parts[0]],
              let v = section[parts[1]] else { return "absent" }
        return v.serialized()
    }

    /// Whether a resumed run may change the key at `path`: the cluster, the evaluation, and the
    /// training keys that only steer the run (`TrainingConfiguration.resumableKeys`).
    public static func mayChangeOnResume(_ path: String) -> Bool {
        path.hasPrefix("cluster.") || path.hasPrefix("evaluation.")
            || TrainingConfiguration.resumableKeys.contains { "training.\($0.stringValue)" == path }
    }

    /// The configuration a run resumed from a checkpoint continues with: the checkpoint's
    /// `saved`, with the keys the user gave (`section.key` → value text) applied. A given key
    /// that would change anything but what `mayChangeOnResume` allows is refused, naming each
    /// such key with both values. `model.vocabulary_size` and `routing.tasks` given as 0
    /// ("from the data") keep the checkpoint's resolved values.
    public static func resumed(from saved: ThorConfiguration, with given: [String: String],
                               checkpoint: String) throws -> ThorConfiguration {
        var keys = given
        for path in ["model.vocabulary_size", "routing.tasks"] where keys[path].map(JSONValue.parseScalar) == JSONValue.number(Double(0)) {
            keys[path] = nil
        }
        let wanted = try saved.applying(overrides: keys)
        let refused = wanted.differences(from: saved).filter { !mayChangeOnResume($0) }
        guard refused.isEmpty else {
            let list = refused.map { "\($0) is \(saved.value(at: $0)) in the checkpoint, \(wanted.value(at: $0)) given" }
            throw TrainingError.invalidConfiguration(
                "--resume \(checkpoint) continues the checkpoint's model and training; these settings contradict it: "
                + list.joined(separator: "; ") + ". Drop them (or start a new run in another --save-dir); only "
                + "training.max_steps, training.dev_interval, training.checkpoint_interval, training.log_interval, "
                + "evaluation.* and cluster.* may change on resume.")
        }
        return wanted
    }

    /// Checks the sections and the constraints between them.
    public func validate(path: String = "") throws {
        try model.validate(path: "model")
        try routing.validate(path: "routing")
        try losses.validate(path: "losses")
        try training.validate(path: "training")
        try data.validate(path: "data")
        try evaluation.validate(path: "evaluation")
        try cluster.validate(path: "cluster")
        if routing.variant.usesTaskPredictor && model.architecture == .decoderOnly {
            try Check.require(routing.moeEvery <= model.prefixLMLayers, "routing.moe_every",
                "variant \(routing.variant.rawValue) needs an MoE layer (its task predictor reads the first one's input): moe_every (\(routing.moeEvery)) must be ≤ encoder_layers + decoder_layers (\(model.prefixLMLayers)) in a decoder-only model")
        } else if routing.variant.usesTaskPredictor {
            try Check.require(routing.moeEvery <= model.encoderLayers, "routing.moe_every",
                "variant \(routing.variant.rawValue) needs an encoder MoE layer (its task predictor reads the first one's input): moe_every (\(routing.moeEvery)) must be ≤ encoder_layers (\(model.encoderLayers))")
        }
    }
}
