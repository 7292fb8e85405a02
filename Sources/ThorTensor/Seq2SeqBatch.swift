/// One padded batch of sentence pairs as plain row-major arrays: the one batch type
/// of the project. ThorData builds it from a corpus (`Seq2SeqBatch(pairs:indices:)`),
/// the model consumes it (`Transformer.forward`), training and evaluation pass it
/// between them. It lives here, in the lowest module, because data and model sit
/// beside each other and neither may depend on the other.
///
/// `source` [B, S] holds `[CLS] … </s>` (ids already in place) and padding;
/// `targetInput` [B, T] starts with BOS; `targetOutput` [B, T] is `targetInput`
/// shifted left (ending in `</s>`). Masks are 1 for real tokens, 0 for padding.
public struct Seq2SeqBatch: Sendable, Equatable {
    /// B: number of sentences.
    public var batchSize: Int
    /// S: padded source length.
    public var sourceLength: Int
    /// T: padded target length.
    public var targetLength: Int
    /// [B, S] source ids.
    public var source: [Int32]
    /// [B, S] 1 for real source tokens, 0 for padding.
    public var sourceMask: [Float]
    /// [B, T] decoder input ids (`<s> y…`).
    public var targetInput: [Int32]
    /// [B, T] ids to predict (`y… </s>`).
    public var targetOutput: [Int32]
    /// [B, T] 1 for real target positions, 0 for padding.
    public var targetMask: [Float]
    /// [B] gold task of each sentence (domain / non-English language), when known.
    public var taskLabels: [Int]?
    /// [B] index of each sentence in the corpus it came from (to put outputs back in
    /// corpus order); `0..<B` when the batch was not drawn from a corpus.
    public var indices: [Int]

    public init(batchSize: Int, sourceLength: Int, targetLength: Int,
                source: [Int32], sourceMask: [Float], targetInput: [Int32], targetOutput: [Int32],
                targetMask: [Float], taskLabels: [Int]? = nil, indices: [Int]? = nil) {
        precondition(indices == nil || indices!.count == batchSize, "Seq2SeqBatch: one index per sentence")
        self.batchSize = batchSize; self.sourceLength = sourceLength; self.targetLength = targetLength
        self.source = source; self.sourceMask = sourceMask; self.targetInput = targetInput
        self.targetOutput = targetOutput; self.targetMask = targetMask; self.taskLabels = taskLabels
        self.indices = indices ?? Array(0..<batchSize)
    }

    /// Builds a padded batch from token lists: masks from the lengths, `pad` elsewhere.
    /// `targets[b]` is `BOS y_1 … y_m </s>`: input drops the last token, output the first.
    public init(sources: [[Int32]], targets: [[Int32]], pad: Int32, taskLabels: [Int]? = nil,
                minSourceLength: Int = 0, minTargetLength: Int = 0) {
        precondition(sources.count == targets.count, "sources and targets differ in count")
        let b = sources.count
        let s = max(minSourceLength, sources.map(\.count).max() ?? 0)
        let t = max(minTargetLength, targets.map { max(0, $0.count - 1) }.max() ?? 0)
        var src = [Int32](repeating: pad, count: b * s), sm = [Float](repeating: 0, count: b * s)
        var ti = [Int32](repeating: pad, count: b * t), to = ti, tm = [Float](repeating: 0, count: b * t)
        for i in 0..<b {
            for (j, id) in sources[i].enumerated() { src[i * s + j] = id; sm[i * s + j] = 1 }
            let y = targets[i]
            for j in 0..<max(0, y.count - 1) {
                ti[i * t + j] = y[j]; to[i * t + j] = y[j + 1]; tm[i * t + j] = 1
            }
        }
        self.init(batchSize: b, sourceLength: s, targetLength: t, source: src, sourceMask: sm,
                  targetInput: ti, targetOutput: to, targetMask: tm, taskLabels: taskLabels)
    }

    /// Tokens including padding, as counted against a token budget: `B · max(S, T)`.
    public var paddedTokens: Int { batchSize * max(sourceLength, targetLength) }
    /// Real (non-pad) target tokens.
    public var targetTokens: Int { Int(targetMask.reduce(0, +)) }
}
