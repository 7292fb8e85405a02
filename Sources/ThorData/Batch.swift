import ThorTensor

/// One sentence pair as token ids, ready for batching.
///
/// - `source`: `[CLS] (tag) s_1 … s_n </s>`
/// - `targetInput`: `<s> y_1 … y_m` (decoder input)
/// - `targetOutput`: `y_1 … y_m </s>` (what the decoder must predict)
public struct EncodedPair: Sendable, Equatable {
    /// Index of the task in the corpus' task list.
    public var task: Int32
    public var source: [Int32]
    public var targetInput: [Int32]
    public var targetOutput: [Int32]

    public init(task: Int32, source: [Int32], targetInput: [Int32], targetOutput: [Int32]) {
        self.task = task; self.source = source; self.targetInput = targetInput; self.targetOutput = targetOutput
    }

    /// Builds the three sequences from the token ids of the sentences.
    public init(task: Int32, sourceTokens: [Int32], targetTokens: [Int32], tag: Int32? = nil) {
        var s: [Int32] = [SpecialTokens.cls]
        if let tag { s.append(tag) }
        s += sourceTokens
        s.append(SpecialTokens.eos)
        self.init(task: task, source: s, targetInput: [SpecialTokens.bos] + targetTokens,
                  targetOutput: targetTokens + [SpecialTokens.eos])
    }
}

extension Seq2SeqBatch {
    /// Pads `pairs` into a batch (padding ``SpecialTokens/pad``, masks 1 on real tokens);
    /// `indices` (positions of the pairs in their corpus) default to `0..<pairs.count`.
    public init(pairs: [EncodedPair], indices: [Int]? = nil) {
        precondition(indices == nil || indices!.count == pairs.count, "Seq2SeqBatch: one index per pair")
        let b = pairs.count
        let s = pairs.map(\.source.count).max() ?? 0
        let t = pairs.map(\.targetInput.count).max() ?? 0
        var source = [Int32](repeating: SpecialTokens.pad, count: b * s)
        var sourceMask = [Float](repeating: 0, count: b * s)
        var targetInput = [Int32](repeating: SpecialTokens.pad, count: b * t)
        var targetOutput = targetInput
        var targetMask = [Float](repeating: 0, count: b * t)
        for (row, p) in pairs.enumerated() {
            for (j, id) in p.source.enumerated() { source[row * s + j] = id; sourceMask[row * s + j] = 1 }
            for j in 0..<p.targetInput.count {
                targetInput[row * t + j] = p.targetInput[j]
                targetOutput[row * t + j] = p.targetOutput[j]
                targetMask[row * t + j] = 1
            }
        }
        self.init(batchSize: b, sourceLength: s, targetLength: t, source: source, sourceMask: sourceMask,
                  targetInput: targetInput, targetOutput: targetOutput, targetMask: targetMask,
                  taskLabels: pairs.map { Int($0.task) }, indices: indices)
    }
}

/// A corpus encoded to ids, with its task list.
public struct EncodedCorpus: Sendable, Equatable {
    /// Task names; `EncodedPair.task` indexes this list.
    public var tasks: [String]
    public var pairs: [EncodedPair]
    /// Number of input pairs dropped for being longer than the limits.
    public var droppedForLength: Int
    /// Indices (into the input pairs) of the pairs dropped for length, in order.
    public var droppedIndices: [Int] = []
    /// Indices (into the input pairs) of the pairs kept, in order: `pairs[i]` came from input `keptIndices[i]`.
    public var keptIndices: [Int] = []

    /// Pairs per task.
    public var taskSizes: [Int] {
        var n = Array(repeating: 0, count: tasks.count)
        for p in pairs { n[Int(p.task)] += 1 }
        return n
    }

    /// Already-encoded pairs (e.g. sentences to translate, with empty targets).
    public init(tasks: [String], pairs: [EncodedPair]) {
        self.tasks = tasks
        self.pairs = pairs
        self.droppedForLength = 0
        self.keptIndices = Array(pairs.indices)
    }

    /// Encodes `pairs`. `tags` maps a task to a tag token put after `[CLS]` (e.g. `"de": "<2en>"`
    /// for multilingual data); tasks without an entry get no tag. Pairs whose source or target
    /// sequence (with special tokens) is longer than `maxLength` are dropped and counted.
    /// - Throws: ``TokenizerError`` for a pair whose task is not in `tasks` or a tag the tokenizer lacks.
    public init(pairs: [TranslationPair], tokenizer: BPETokenizer, tasks: [String],
                tags: [String: String] = [:], maxLength: Int = .max) throws {
        self.tasks = tasks
        var taskIndex: [String: Int32] = [:]
        for (i, t) in tasks.enumerated() { taskIndex[t] = Int32(i) }
        var tagIDs: [String: Int32] = [:]
        for (task, tag) in tags {
            guard let id = tokenizer.tagID(tag) else { throw TokenizerError("tag token '\(tag)' for task '\(task)' is not in the vocabulary") }
            tagIDs[task] = id
        }
        let sources = tokenizer.encode(pairs.map(\.source))
        let targets = tokenizer.encode(pairs.map(\.target))
        var out: [EncodedPair] = []
        out.reserveCapacity(pairs.count)
        var dropped: [Int] = [], kept: [Int] = []
        for (i, p) in pairs.enumerated() {
            guard let t = taskIndex[p.task] else {
                throw TokenizerError("pair \(i + 1) has task '\(p.task)', not one of \(tasks.joined(separator: ", "))")
            }
            let e = EncodedPair(task: t, sourceTokens: sources[i], targetTokens: targets[i], tag: tagIDs[p.task])
            if e.source.count > maxLength || e.targetInput.count > maxLength { dropped.append(i); continue }
            out.append(e)
            kept.append(i)
        }
        self.pairs = out
        self.droppedForLength = dropped.count
        self.droppedIndices = dropped
        self.keptIndices = kept
    }
}

/// Groups sentences into batches under a token budget.
public enum Batching {
    /// Splits `indices` (into `corpus.pairs`) into batches of at most `maxTokens`
    /// padded tokens (`B · max(S, T)`), after sorting by (source length, target length)
    /// so that similar lengths share a batch. Ties keep the order of `indices`.
    /// A sentence longer than `maxTokens` alone forms its own batch.
    public static func group(_ indices: [Int], of corpus: EncodedCorpus, maxTokens: Int) -> [[Int]] {
        precondition(maxTokens > 0, "maxTokens must be positive")
        let order = indices.enumerated().sorted { a, b in
            let pa = corpus.pairs[a.element], pb = corpus.pairs[b.element]
            if pa.source.count != pb.source.count { return pa.source.count < pb.source.count }
            if pa.targetInput.count != pb.targetInput.count { return pa.targetInput.count < pb.targetInput.count }
            return a.offset < b.offset
        }.map(\.element)
        var batches: [[Int]] = []
        var current: [Int] = []
        var width = 0
        for i in order {
            let p = corpus.pairs[i]
            let w = max(width, p.source.count, p.targetInput.count)
            if !current.isEmpty && w * (current.count + 1) > maxTokens {
                batches.append(current); current = []; width = 0
            }
            current.append(i)
            width = max(width, p.source.count, p.targetInput.count)
        }
        if !current.isEmpty { batches.append(current) }
        return batches
    }

    /// Evaluation batches over the pairs at `indices` (the whole corpus when nil) in a fixed
    /// order (no sampling, no shuffling). Use `Seq2SeqBatch.indices` to put outputs back in corpus order.
    public static func evaluationBatches(_ corpus: EncodedCorpus, indices: [Int]? = nil, maxTokens: Int) -> [Seq2SeqBatch] {
        group(indices ?? Array(corpus.pairs.indices), of: corpus, maxTokens: maxTokens).map { idx in
            Seq2SeqBatch(pairs: idx.map { corpus.pairs[$0] }, indices: idx)
        }
    }
}
