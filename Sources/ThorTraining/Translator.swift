import Foundation
import ThorModel
import ThorData
import ThorCluster

/// A trained model loaded from a checkpoint, ready to translate text.
public final class Translator {
    public let checkpoint: RunCheckpoint
    public let runtime: ExpertRuntime
    public let model: TranslationModel
    public var tokenizer: BPETokenizer { checkpoint.tokenizer }
    public var tasks: [String] { checkpoint.state.tasks }

    /// Loads `directory`; the experts run in this process (`workers` = 0) or on a local cluster.
    /// `goldTask`: a `thor-topp` checkpoint routes with `r = E_task[gold]` instead of the predicted
    /// mixture (the `gold` variant has the same parameters), to measure what wrong task predictions cost.
    public init(checkpoint directory: String, workers: Int = 0, threads: Int = 2, goldTask: Bool = false) throws {
        checkpoint = try RunCheckpoint(directory: directory)
        var c = checkpoint.configuration
        if goldTask {
            guard c.routing.variant == .thorTopP || c.routing.variant == .gold else {
                throw TrainingError.invalidConfiguration(
                    "routing with the gold task needs a thor-topp checkpoint (same parameters as gold); this one is \(c.routing.variant.rawValue)")
            }
            c.routing.variant = .gold
        }
        runtime = try ExpertRuntime(configuration: c, workers: workers, threads: threads)
        model = try TranslationModel(configuration: c, backend: runtime.backend)
        try checkpoint.restore(into: model)
    }

    /// Translates `sources` (with their task names, needed by the `gold` and `hard`
    /// variants; THOR variants predict the task themselves), in batches of at most
    /// `options.maxTokens` padded tokens; results in input order.
    /// A line longer than the model's positional table (`model.max_positions` tokens) is
    /// truncated to fit, with a line for `warn` naming it; the other lines are unaffected.
    public func translate(_ sources: [String], tasks taskNames: [String?], options: DecodingOptions,
                          warn: (String) -> Void = { FileHandle.standardError.write(Data(("warning: " + $0 + "\n").utf8)) })
        throws -> [String] {
        precondition(sources.count == taskNames.count)
        var labels: [Int32] = []
        for (i, t) in taskNames.enumerated() {
            if let t {
                guard let index = tasks.firstIndex(of: t) else {
                    throw TrainingError.data("line \(i + 1): unknown task '\(t)'; this model knows \(tasks.joined(separator: ", "))")
                }
                labels.append(Int32(index))
            } else {
                let v = model.configuration.routing.variant
                guard v != .gold && v != .hard else {
                    throw TrainingError.data("line \(i + 1): the \(v.rawValue) variant needs a task; give `task<TAB>source` lines or --task")
                }
                labels.append(0)
            }
        }
        let limit = model.configuration.model.maxPositions
        let pairs: [EncodedPair] = sources.enumerated().map { i, s in
            let tokens = tokenizer.encode(s)
            let e = EncodedPair(task: labels[i], sourceTokens: tokens, targetTokens: [])
            guard e.source.count > limit else { return e }
            let specials = e.source.count - tokens.count
            warn("line \(i + 1) has \(e.source.count) tokens; the model takes at most \(limit): "
                 + "translating its first \(limit - specials) tokens only")
            return EncodedPair(task: labels[i], sourceTokens: Array(tokens.prefix(max(0, limit - specials))), targetTokens: [])
        }
        let corpus = EncodedCorpus(tasks: tasks, pairs: pairs)
        var out = [String](repeating: "", count: sources.count)
        for batch in Batching.evaluationBatches(corpus, maxTokens: options.maxTokens) {
            let ids = try Evaluator.translate(model, batch: batch, options: options)
            for (row, index) in batch.indices.enumerated() { out[index] = tokenizer.decode(ids[row]) }
        }
        return out
    }
}
