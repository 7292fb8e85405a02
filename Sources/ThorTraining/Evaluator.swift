import Foundation
import ThorTensor
import ThorModel
import ThorData

/// Quality and routing of a model on an evaluation set, as the paper reports them:
/// BLEU per task and averaged (sacreBLEU 2.6, 13a, exp smoothing), activated
/// experts per token per task (Table 7), task-prediction accuracy (Appendix A) and
/// the task × predicted-task matrix (Appendix C).
public struct EvaluationReport: Sendable {
    public var tasks: [String]
    /// Corpus BLEU of each task (nil for a task with no sentences here).
    public var bleu: [BLEUScore?]
    /// Mean of the per-task BLEU scores.
    public var averageBLEU: Double
    /// Teacher-forced `L_mt` (label-smoothed), mean over target tokens.
    public var loss: Double
    /// Experts per token (mean over MoE layers of the per-layer mean over tokens), overall and per task.
    public var expertsPerToken: Double?
    public var expertsPerTokenByTask: [Double?]
    /// Experts per token of each MoE layer (ordinal order, all tasks).
    public var expertsPerTokenByLayer: [Double?]
    public var taskAccuracy: Double?
    /// Row-normalized task × predicted-task matrix.
    public var taskMatrix: [[Double]]
    /// Names of the MoE layers (`encoder.layers.1.moe`, …), in ordinal order.
    public var moeLayers: [String]
    /// Per MoE layer the task × expert usage matrix: `[layer][task][expert]` = share of the task's
    /// tokens that the expert served (rows sum to the task's experts per token in that layer).
    public var expertUsage: [[[Double]]]
    public var sentences: Int
    /// Sentences of each task.
    public var sentencesByTask: [Int]
    /// Target tokens produced per second of decoding.
    public var decodeTokensPerSecond: Double
    /// Translations, in the order of the evaluated pairs.
    public var hypotheses: [String]

    /// The table printed at the end of a run and by `thor eval checkpoint`.
    public func table(title: String) -> String {
        var out = "\(title)\n"
        let w = max(8, tasks.map(\.count).max() ?? 0)
        func pad(_ s: String) -> String { s.padding(toLength: w, withPad: " ", startingAt: 0) }
        out += "\(pad("task"))    BLEU  experts/token  sentences\n"
        for (i, t) in tasks.enumerated() {
            let b = bleu[i].map { String(format: "%6.2f", $0.score) } ?? "     -"
            let e = expertsPerTokenByTask[i].map { String(format: "%13.3f", $0) } ?? "            -"
            out += "\(pad(t))  \(b)  \(e)  \(String(format: "%9d", sentencesByTask[i]))\n"
        }
        out += "\(pad("average"))  \(String(format: "%6.2f", averageBLEU))  \(expertsPerToken.map { String(format: "%13.3f", $0) } ?? "            -")  \(String(format: "%9d", sentences))\n"
        if let a = taskAccuracy { out += String(format: "task accuracy: %.3f\n", a) }
        out += String(format: "loss (teacher-forced L_mt): %.4f   decoding: %.0f tokens/s\n", loss, decodeTokensPerSecond)
        if !taskMatrix.isEmpty, taskAccuracy != nil {
            out += "task × predicted task (row-normalized):\n"
            out += pad("") + "  " + tasks.map { String($0.prefix(8)).padding(toLength: 8, withPad: " ", startingAt: 0) }.joined(separator: " ") + "\n"
            for (i, row) in taskMatrix.enumerated() where i < tasks.count {
                out += pad(tasks[i]) + "  " + row.map { String(format: "%8.3f", $0) }.joined(separator: " ") + "\n"
            }
        }
        for (l, name) in moeLayers.enumerated() where l < expertUsage.count {
            let m = expertUsage[l]
            guard !m.isEmpty else { continue }
            out += "\(name): task × expert usage (share of the task's tokens each expert serves):\n"
            out += pad("") + "  " + (0..<m[0].count).map { e -> String in let h = "e\(e)"; return String(repeating: " ", count: max(0, 6 - h.count)) + h }.joined(separator: " ") + "\n"
            for (i, row) in m.enumerated() where i < tasks.count {
                out += pad(tasks[i]) + "  " + row.map { String(format: "%6.3f", $0) }.joined(separator: " ") + "\n"
            }
        }
        out += SacreBLEU.signature + "\n"
        return out
    }

    /// The figures as a JSON-ready dictionary (for metrics logs).
    public var record: [String: Any] {
        var r: [String: Any] = ["bleu": averageBLEU, "loss": loss, "sentences": sentences,
                                "decode_tokens_per_s": decodeTokensPerSecond]
        for (i, t) in tasks.enumerated() {
            if let b = bleu[i] { r["bleu_\(t)"] = b.score }
            if let e = expertsPerTokenByTask[i] { r["experts_per_token_\(t)"] = e }
        }
        if let e = expertsPerToken { r["experts_per_token"] = e }
        if let a = taskAccuracy { r["task_accuracy"] = a; r["task_matrix"] = taskMatrix }
        if !moeLayers.isEmpty {
            var usage: [String: Any] = [:], perLayer: [String: Any] = [:]
            for (l, name) in moeLayers.enumerated() where l < expertUsage.count { usage[name] = expertUsage[l] }
            for (l, name) in moeLayers.enumerated() where l < expertsPerTokenByLayer.count {
                if let e = expertsPerTokenByLayer[l] { perLayer[name] = e }
            }
            r["expert_usage"] = usage
            r["experts_per_token_by_layer"] = perLayer
        }
        return r
    }
}

/// How to translate during evaluation.
public struct DecodingOptions: Sendable {
    public var beamSize: Int
    public var lengthPenalty: Float
    public var maxOutputLength: Int
    /// Padded tokens per decoding batch.
    public var maxTokens: Int
    public init(beamSize: Int = 1, lengthPenalty: Float = 1, maxOutputLength: Int = 64, maxTokens: Int = 4096) {
        self.beamSize = beamSize; self.lengthPenalty = lengthPenalty
        self.maxOutputLength = maxOutputLength; self.maxTokens = maxTokens
    }
    public init(_ c: ThorConfiguration) {
        self.init(beamSize: c.evaluation.beamSize, lengthPenalty: c.evaluation.lengthPenalty,
                  maxOutputLength: c.evaluation.maxOutputLength, maxTokens: c.training.maxTokensPerBatch)
    }
}

public enum Evaluator {
    /// Indices of at most `limit` pairs spread evenly over `count` (0: all).
    public static func spread(count: Int, limit: Int) -> [Int] {
        guard limit > 0, limit < count else { return Array(0..<count) }
        return (0..<limit).map { $0 * count / limit }
    }

    /// Translates `ids` [B] sentences of `batch` and returns the token ids of each (no BOS/EOS).
    public static func translate(_ model: TranslationModel, batch: Seq2SeqBatch, options: DecodingOptions) throws -> [[Int32]] {
        try model.network.translate(batch, beamSize: options.beamSize, lengthPenalty: options.lengthPenalty,
                                    bos: SpecialTokens.bos, eos: SpecialTokens.eos, maxLength: options.maxOutputLength)
    }

    /// Evaluates `model` on `pairs` (text) / `corpus` (the same pairs tokenized, same order),
    /// using the pairs at `indices` (all when nil).
    public static func evaluate(_ model: TranslationModel, tokenizer: BPETokenizer, corpus: EncodedCorpus,
                                pairs: [TranslationPair], indices: [Int]? = nil,
                                options: DecodingOptions) throws -> EvaluationReport {
        precondition(corpus.pairs.count == pairs.count, "evaluation corpus and text pairs must align")
        let tasks = corpus.tasks
        let chosen = indices ?? Array(0..<pairs.count)
        guard !chosen.isEmpty else {
            throw TrainingError.data("the evaluation set is empty: there is nothing to score (BLEU and loss need at least one pair)")
        }
        let batches = Batching.evaluationBatches(corpus, indices: chosen, maxTokens: options.maxTokens)
        var hypotheses = [String](repeating: "", count: pairs.count)
        var lossSum = 0.0, lossTokens = 0, produced = 0
        var decodeSeconds = 0.0
        model.moe.startCollectingStatistics()
        for batch in batches {
            let ce = try model.network.forward(batch, training: false)
            lossSum += ce.lossSum; lossTokens += ce.tokenCount
        }
        let stats = model.moe.takeStatistics()
        for batch in batches {
            let watch = Stopwatch()
            let out = try translate(model, batch: batch, options: options)
            decodeSeconds += watch.seconds
            for (row, index) in batch.indices.enumerated() {
                hypotheses[index] = tokenizer.decode(out[row])
                produced += out[row].count + 1
            }
        }
        let chosenByTask = tasks.indices.map { t in chosen.filter { corpus.pairs[$0].task == Int32(t) } }
        let bleu: [BLEUScore?] = try chosenByTask.map { mine in
            mine.isEmpty ? nil : try SacreBLEU.corpusScore(hypotheses: mine.map { hypotheses[$0] },
                                                           references: mine.map { pairs[$0].target })
        }
        let scored = bleu.compactMap { $0?.score }
        return EvaluationReport(
            tasks: tasks, bleu: bleu, averageBLEU: scored.isEmpty ? 0 : scored.reduce(0, +) / Double(scored.count),
            loss: lossTokens > 0 ? lossSum / Double(lossTokens) : 0,
            expertsPerToken: stats?.expertsPerToken(),
            expertsPerTokenByTask: tasks.indices.map { stats?.expertsPerToken(task: $0) },
            expertsPerTokenByLayer: stats.map { st in (0..<st.layers).map { st.expertsPerToken(layer: $0) } } ?? [],
            taskAccuracy: stats?.taskAccuracy, taskMatrix: stats?.normalizedTaskMatrix ?? [],
            moeLayers: model.moe.layers.map(\.name),
            expertUsage: stats.map { st in (0..<st.layers).map { st.taskExpertUsage(layer: $0) } } ?? [],
            sentences: chosen.count,
            sentencesByTask: chosenByTask.map(\.count),
            decodeTokensPerSecond: Double(produced) / max(decodeSeconds, 1e-9),
            hypotheses: chosen.map { hypotheses[$0] })
    }
}
