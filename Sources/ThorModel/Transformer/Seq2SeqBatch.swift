/// One batch of sentence pairs as plain row-major arrays.
///
/// `source` [B, S] holds `[CLS] … </s>` (ids already in place) and padding;
/// `targetInput` [B, T] starts with BOS; `targetOutput` [B, T] is `targetInput`
/// shifted left (ending in `</s>`). Masks are 1 for real tokens, 0 for padding.
public struct Seq2SeqBatch: Sendable, Equatable {
    public var batchSize: Int
    public var sourceLength: Int
    public var targetLength: Int
    public var source: [Int32]
    public var sourceMask: [Float]
    public var targetInput: [Int32]
    public var targetOutput: [Int32]
    public var targetMask: [Float]
    /// Gold task of each sentence (domain / non-English language), when known.
    public var taskLabels: [Int]?

    public init(batchSize: Int, sourceLength: Int, targetLength: Int,
                source: [Int32], sourceMask: [Float], targetInput: [Int32], targetOutput: [Int32],
                targetMask: [Float], taskLabels: [Int]? = nil) {
        self.batchSize = batchSize; self.sourceLength = sourceLength; self.targetLength = targetLength
        self.source = source; self.sourceMask = sourceMask; self.targetInput = targetInput
        self.targetOutput = targetOutput; self.targetMask = targetMask; self.taskLabels = taskLabels
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

    /// Checks shapes and id ranges; throws a `TransformerError` naming what is wrong.
    public func validate(vocabularySize v: Int, maxPositions: Int) throws {
        func fail(_ s: String) -> TransformerError { .invalidBatch(s) }
        guard batchSize > 0, sourceLength > 0, targetLength > 0 else {
            throw fail("empty batch (B=\(batchSize), S=\(sourceLength), T=\(targetLength))")
        }
        guard source.count == batchSize * sourceLength, sourceMask.count == source.count else {
            throw fail("source/sourceMask need B·S = \(batchSize * sourceLength) entries")
        }
        guard targetInput.count == batchSize * targetLength, targetOutput.count == targetInput.count,
              targetMask.count == targetInput.count else {
            throw fail("targetInput/targetOutput/targetMask need B·T = \(batchSize * targetLength) entries")
        }
        guard sourceLength <= maxPositions, targetLength <= maxPositions else {
            throw fail("length \(max(sourceLength, targetLength)) exceeds maxPositions \(maxPositions)")
        }
        for ids in [source, targetInput, targetOutput] {
            if let bad = ids.first(where: { $0 < 0 || Int($0) >= v }) {
                throw fail("token id \(bad) outside the vocabulary 0..<\(v)")
            }
        }
        if let t = taskLabels, t.count != batchSize { throw fail("taskLabels needs \(batchSize) entries") }
    }
}

/// Errors of the Transformer and its decoding.
public enum TransformerError: Error, CustomStringConvertible, Equatable {
    case invalidBatch(String)
    case noTrainingForward
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .invalidBatch(let s): return "invalid batch: \(s)"
        case .noTrainingForward: return "backward called without a preceding training forward"
        case .invalidArgument(let s): return "invalid argument: \(s)"
        }
    }
}
