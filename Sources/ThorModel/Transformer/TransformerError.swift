import ThorTensor

extension Seq2SeqBatch {
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
        guard indices.count == batchSize else { throw fail("indices needs \(batchSize) entries") }
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
