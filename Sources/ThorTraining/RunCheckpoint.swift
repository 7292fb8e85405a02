import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorData
import ThorCheckpoint

/// Where training stands: everything besides the weights and optimizer moments
/// that a resumed run needs to continue bit for bit.
public struct TrainingState: Codable, Equatable, Sendable {
    /// Optimizer steps done.
    public var step: Int
    /// Position of the next training batch (epoch, batch, sampler state, per-task cursors).
    public var dataPosition: DataPosition
    /// The dropout generator's state.
    public var dropoutState: UInt64
    /// Task names in label order.
    public var tasks: [String]

    public init(step: Int, dataPosition: DataPosition, dropoutState: UInt64, tasks: [String]) {
        self.step = step; self.dataPosition = dataPosition; self.dropoutState = dropoutState; self.tasks = tasks
    }
}

/// A checkpoint directory, readable by any safetensors reader:
///
/// ```
/// config.json                     the full configuration (vocabulary size and tasks resolved)
/// tokenizer.json                  the BPE vocabulary
/// state.json                      TrainingState (also in coordinator.safetensors metadata)
/// coordinator.safetensors         coordinator parameters `NAME`, Adam moments `NAME.adam_m`, `NAME.adam_v`
/// experts/moe-L-expert-E.safetensors   one file per routed expert: weights and Adam moments
/// manifest.json                   SHA-256 of every other file (checked before anything is read)
/// ```
///
/// Expert files are per expert, not per worker, so a run resumes on any number of workers.
public struct RunCheckpoint {
    public static let format = "thor-checkpoint-1"

    public let directory: String
    public let configuration: ThorConfiguration
    public let tokenizer: BPETokenizer
    public let state: TrainingState
    let coordinator: SafeTensorsFile

    /// Writes a checkpoint of `model` atomically (into a temporary directory renamed into place).
    public static func save(model: TranslationModel, tokenizer: BPETokenizer, state: TrainingState,
                            to directory: String) throws {
        let fm = FileManager.default
        let tmp = directory + ".partial"
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp + "/experts", withIntermediateDirectories: true)
        let stateJSON = String(decoding: try JSONEncoder.sorted.encode(state), as: UTF8.self)
        let configJSON = model.configuration.jsonString
        var tensors: [String: Tensor] = [:]
        for p in model.parameters {
            tensors[p.name] = p.value
            tensors[p.name + ".adam_m"] = p.m
            tensors[p.name + ".adam_v"] = p.v
        }
        try SafeTensorsFile(tensors: tensors, metadata: ["format": format, "state": stateJSON, "config": configJSON])
            .write(to: tmp + "/coordinator.safetensors")
        let experts = try model.backend.exportState()
        for key in experts.keys.sorted() {
            try SafeTensorsFile(tensors: experts[key]!, metadata: [
                "format": format, "layer": String(key.layer), "expert": String(key.expert)])
                .write(to: tmp + "/" + expertFile(key))
        }
        try configJSON.write(toFile: tmp + "/config.json", atomically: true, encoding: .utf8)
        try tokenizer.save(to: tmp + "/tokenizer.json")
        try (stateJSON + "\n").write(toFile: tmp + "/state.json", atomically: true, encoding: .utf8)
        try CheckpointManifest.write(directory: tmp)
        if fm.fileExists(atPath: directory) {
            let old = directory + ".old"
            try? fm.removeItem(atPath: old)
            try fm.moveItem(atPath: directory, toPath: old)
            try fm.moveItem(atPath: tmp, toPath: directory)
            try? fm.removeItem(atPath: old)
        } else {
            try fm.moveItem(atPath: tmp, toPath: directory)
        }
    }

    /// Relative path of an expert's file.
    public static func expertFile(_ key: ExpertKey) -> String { "experts/moe-\(key.layer)-expert-\(key.expert).safetensors" }

    /// Reads and checks a checkpoint directory (every file present and well-formed).
    public init(directory: String) throws {
        self.directory = directory
        func fail(_ m: String) -> TrainingError { .checkpoint("\(directory): \(m)") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw fail("not a checkpoint directory")
        }
        do { try CheckpointManifest.verify(directory: directory) } catch { throw fail("\(error); refusing to load it") }
        do {
            configuration = try ThorConfiguration(contentsOf: directory + "/config.json")
        } catch { throw fail("config.json: \(error)") }
        do {
            tokenizer = try BPETokenizer.load(from: directory + "/tokenizer.json")
        } catch { throw fail("tokenizer.json: \(error)") }
        do {
            coordinator = try SafeTensorsFile.read(path: directory + "/coordinator.safetensors")
        } catch { throw fail("coordinator.safetensors: \(error)") }
        guard coordinator.metadata["format"] == Self.format else {
            throw fail("coordinator.safetensors is not a \(Self.format) file (format: \(coordinator.metadata["format"] ?? "none"))")
        }
        guard let s = coordinator.metadata["state"],
              let st = try? JSONDecoder().decode(TrainingState.self, from: Data(s.utf8)) else {
            throw fail("coordinator.safetensors has no readable training state")
        }
        state = st
        guard configuration.model.vocabularySize == tokenizer.vocabularySize else {
            throw fail("config vocabulary_size \(configuration.model.vocabularySize) ≠ tokenizer's \(tokenizer.vocabularySize)")
        }
    }

    /// Loads the weights, optimizer moments and dropout state into `model` (built from
    /// `configuration`, on any backend). Everything is read and checked before anything
    /// changes: a corrupt checkpoint leaves the model as it was.
    public func restore(into model: TranslationModel) throws {
        func fail(_ m: String) -> TrainingError { .checkpoint("\(directory): \(m)") }
        var staged: [(Tensor, Tensor)] = []
        for p in model.parameters {
            for (suffix, dst) in [("", p.value), (".adam_m", p.m), (".adam_v", p.v)] {
                let t: Tensor
                do { t = try coordinator.tensor(p.name + suffix, shape: p.shape) } catch { throw fail("coordinator.safetensors: \(error)") }
                if let bad = NonFinite.first(in: [(p.name + suffix, t)]) {
                    throw fail("coordinator.safetensors: tensor \(bad) is not finite; refusing to load it")
                }
                staged.append((t, dst))
            }
        }
        var experts: [ExpertKey: [String: Tensor]] = [:]
        for key in TranslationModel.expertKeys(for: model.configuration) {
            let path = directory + "/" + Self.expertFile(key)
            let file: SafeTensorsFile
            do { file = try SafeTensorsFile.read(path: path) } catch { throw fail("\(Self.expertFile(key)): \(error)") }
            var tensors: [String: Tensor] = [:]
            for name in file.names {
                do { tensors[name] = try file.tensor(name) } catch { throw fail("\(Self.expertFile(key)): \(error)") }
            }
            if let bad = NonFinite.first(in: tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }) {
                throw fail("\(Self.expertFile(key)): tensor \(bad) is not finite; refusing to load it")
            }
            experts[key] = tensors
        }
        do { try model.backend.importState(experts) } catch { throw fail("experts: \(error)") }
        for (src, dst) in staged { dst.copy(from: src) }
        model.network.dropoutState = state.dropoutState
    }
}

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return e
    }
}
