import ThorTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Greedy decoding and batched beam search over any incremental decoder: `step` decodes the
/// next position of every row (`tokens` [rows] in, logits [rows, V] out), `reorder` keeps row
/// `rows[i]` of the decoder's state as row `i`. The encoder-decoder `Transformer` and the
/// decoder-only `PrefixLMTransformer` both decode through it.
public enum SequenceSearch {
    /// Greedy decoding: argmax at every step (ties: lower id) until `eos` or `maxLength`
    /// tokens. Returns each sentence's tokens without BOS and without `eos`.
    public static func greedy(batchSize b: Int, vocabularySize v: Int, bos: Int32, eos: Int32, maxLength: Int,
                              step decodeStep: ([Int32]) throws -> Tensor) throws -> [[Int32]] {
        var tokens = [Int32](repeating: bos, count: b)
        var out = [[Int32]](repeating: [], count: b), done = [Bool](repeating: false, count: b)
        for _ in 0..<maxLength {
            let logits = try decodeStep(tokens)
            for i in 0..<b {
                let row = logits.pointer + i * v
                var best = 0
                for j in 1..<v where row[j] > row[best] { best = j }
                tokens[i] = Int32(best)
                if !done[i] { if Int32(best) == eos { done[i] = true } else { out[i].append(Int32(best)) } }
            }
            if !done.contains(false) { break }
        }
        return out
    }

    /// Batched beam search. Each sentence keeps `beamSize` hypotheses; a hypothesis that
    /// emitted `eos` is frozen (kept with its score). Stops when every hypothesis is finished
    /// or after `maxLength` steps; returns per sentence the hypothesis with the best
    /// `score / length^lengthPenalty` (length counts `eos`; ties: earlier beam), without BOS/`eos`.
    /// Candidate ties are broken by lower beam, then lower token id, so beam 1 equals greedy.
    public static func beam(batchSize b: Int, vocabularySize v: Int, beamSize k: Int, lengthPenalty: Float = 1,
                            bos: Int32, eos: Int32, maxLength: Int,
                            step decodeStep: ([Int32]) throws -> Tensor, reorder: ([Int]) throws -> Void) throws -> [[Int32]] {
        guard k >= 1 else { throw TransformerError.invalidArgument("beam size must be ≥ 1, got \(k)") }
        // The first step runs on one row per sentence (every beam would be the same); the cache
        // then grows to `k` rows per sentence through `reorder`, FFN incremental states included.
        var width = 1
        var scores = [Double](repeating: 0, count: b)
        var finished = [Bool](repeating: false, count: b)
        var hyps = [[Int32]](repeating: [], count: b)
        var tokens = [Int32](repeating: bos, count: b)
        let logProbs = UnsafeMutableBufferPointer<Double>.allocate(capacity: v)
        defer { logProbs.deallocate() }
        for _ in 0..<maxLength {
            if !finished.contains(false) { break }
            let logits = try decodeStep(tokens)
            let rows = b * k
            var source = [Int](repeating: 0, count: rows)
            var newTokens = [Int32](repeating: eos, count: rows), newScores = [Double](repeating: 0, count: rows)
            for s in 0..<b {
                // Best `k` candidates (score, beam, token), kept sorted: higher score, then lower beam/token.
                var best: [(score: Double, beam: Int, token: Int)] = []
                func offer(_ c: (score: Double, beam: Int, token: Int)) {
                    if best.count == k, let last = best.last, !(c.score > last.score) { return }
                    var at = best.count
                    while at > 0 && c.score > best[at - 1].score { at -= 1 }
                    best.insert(c, at: at)
                    if best.count > k { best.removeLast() }
                }
                for j in 0..<width {
                    let r = s * width + j
                    if scores[r] == -Double.infinity { continue }
                    if finished[r] { offer((scores[r], j, Int(eos))); continue }
                    let row = logits.pointer + r * v
                    var mx = -Float.infinity
                    for t in 0..<v { mx = max(mx, row[t]) }
                    var sum = 0.0
                    for t in 0..<v { sum += Double(expf(row[t] - mx)) }
                    let logZ = Double(mx) + log(sum)
                    let base = scores[r]
                    for t in 0..<v { logProbs[t] = base + (Double(row[t]) - logZ) }
                    for t in 0..<v { offer((logProbs[t], j, t)) }
                }
                for j in 0..<k {
                    let r = s * k + j
                    if j < best.count {
                        let c = best[j]
                        source[r] = s * width + c.beam; newTokens[r] = Int32(c.token); newScores[r] = c.score
                    } else {
                        source[r] = s * width; newScores[r] = -Double.infinity
                    }
                }
            }
            let oldHyps = hyps, oldFinished = finished
            hyps = []; finished = []
            for r in 0..<rows {
                let from = source[r]
                var h = oldHyps[from]
                if !oldFinished[from] && newScores[r] > -Double.infinity { h.append(newTokens[r]) }
                hyps.append(h)
                finished.append(oldFinished[from] || newTokens[r] == eos || newScores[r] == -Double.infinity)
            }
            scores = newScores; tokens = newTokens; width = k
            try reorder(source)
        }
        var result: [[Int32]] = []
        for s in 0..<b {
            var bestRow = -1, bestValue = -Double.infinity
            for j in 0..<width {
                let r = s * width + j
                guard scores[r] > -Double.infinity else { continue }
                let len = Double(max(1, hyps[r].count))
                let value = scores[r] / pow(len, Double(lengthPenalty))
                if bestRow < 0 || value > bestValue { bestRow = r; bestValue = value }
            }
            var h = bestRow >= 0 ? hyps[bestRow] : []
            if h.last == eos { h.removeLast() }
            result.append(h)
        }
        return result
    }
}

/// A decoding cache with one row per hypothesis (`DecoderCache`, `PrefixLMCache`).
public protocol IncrementalDecodingCache: AnyObject {
    var batchSize: Int { get }
    /// Target positions decoded so far (the next step decodes position `step`).
    var step: Int { get }
    /// Target positions the cache holds.
    var targetCapacity: Int { get }
    /// Row `i` becomes old row `rows[i]` (indices already checked).
    func reorder(_ rows: [Int])
}

/// A model that decodes one target position at a time from an `IncrementalDecodingCache`; greedy
/// decoding and beam search come with it.
public protocol IncrementalDecoder {
    associatedtype Cache: IncrementalDecodingCache
    var configuration: TransformerConfiguration { get }
    /// Decodes position `cache.step` of every row (`tokens` [B], BOS first): logits `[B, V]`; advances the cache.
    func decodeStep(_ tokens: [Int32], cache: Cache) throws -> Tensor
}

extension IncrementalDecoder {
    /// Checks `decodeStep`'s input: one token per row, inside the vocabulary, room left in the cache.
    func validateStep(_ tokens: [Int32], cache: Cache) throws {
        let b = cache.batchSize, v = configuration.vocabularySize
        guard tokens.count == b else { throw TransformerError.invalidArgument("decodeStep needs \(b) tokens, got \(tokens.count)") }
        guard cache.step < cache.targetCapacity else {
            throw TransformerError.invalidArgument("decoder cache full at \(cache.targetCapacity) positions")
        }
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= v }) {
            throw TransformerError.invalidArgument("token id \(bad) outside the vocabulary 0..<\(v)")
        }
    }

    /// Reorders every row of `cache` (keys/values, MoE states, masks, labels, `r`): new row `i` = old row `rows[i]`.
    public func reorder(_ cache: Cache, by rows: [Int]) throws {
        if let bad = rows.first(where: { $0 < 0 || $0 >= cache.batchSize }) {
            throw TransformerError.invalidArgument("reorder index \(bad) outside 0..<\(cache.batchSize)")
        }
        cache.reorder(rows)
    }

    /// Greedy decoding (`SequenceSearch.greedy`) from a fresh `cache`.
    public func greedyDecode(cache: Cache, bos: Int32, eos: Int32, maxLength: Int) throws -> [[Int32]] {
        try SequenceSearch.greedy(batchSize: cache.batchSize, vocabularySize: configuration.vocabularySize,
                                  bos: bos, eos: eos, maxLength: maxLength) { try decodeStep($0, cache: cache) }
    }

    /// Batched beam search (`SequenceSearch.beam`) from a fresh `cache`.
    public func beamSearch(cache: Cache, beamSize k: Int, lengthPenalty: Float = 1,
                           bos: Int32, eos: Int32, maxLength: Int) throws -> [[Int32]] {
        guard k >= 1 else { throw TransformerError.invalidArgument("beam size must be ≥ 1, got \(k)") }
        return try SequenceSearch.beam(batchSize: cache.batchSize, vocabularySize: configuration.vocabularySize,
                                       beamSize: k, lengthPenalty: lengthPenalty, bos: bos, eos: eos, maxLength: maxLength,
                                       step: { try decodeStep($0, cache: cache) }, reorder: { try reorder(cache, by: $0) })
    }
}
