import ThorTensor

/// One prefix-LM layer's incremental-decoding cache: self-attention keys/values of the prefix and
/// of the positions generated so far (`[B, capacity, d]`, prefix slots first), and the FFN
/// sublayer's own typed `IncrementalState` (the MoE layer's running context sum, started from the prefix).
public final class PrefixLMLayerCache {
    public private(set) var keys: Tensor, values: Tensor
    public let feedForwardState: IncrementalState?
    public let capacity: Int

    init(batchSize b: Int, capacity: Int, dim d: Int, feedForwardState: IncrementalState?) {
        keys = Tensor(shape: [b, capacity, d]); values = Tensor(shape: [b, capacity, d])
        self.capacity = capacity; self.feedForwardState = feedForwardState
    }

    /// Writes the keys/values `[B·L, d]` of a prefix pass into slots `0 ..< L`.
    func write(keys k: Tensor, values v: Tensor, batch b: Int, length l: Int) {
        let d = k.columns
        for i in 0..<b {
            Kernels.copy(k.pointer + i * l * d, to: keys.pointer + i * capacity * d, count: l * d)
            Kernels.copy(v.pointer + i * l * d, to: values.pointer + i * capacity * d, count: l * d)
        }
    }

    /// Writes one step's keys/values `[B, d]` into slot `slot`.
    func append(keys k: Tensor, values v: Tensor, at slot: Int) {
        let d = k.columns
        for i in 0..<k.rows {
            Kernels.copy(k.pointer + i * d, to: keys.pointer + (i * capacity + slot) * d, count: d)
            Kernels.copy(v.pointer + i * d, to: values.pointer + (i * capacity + slot) * d, count: d)
        }
    }

    func reorder(_ rows: [Int]) {
        keys = gatherRows(keys, rows); values = gatherRows(values, rows)
        feedForwardState?.reorder(rows)
    }
}

/// Everything incremental prefix-LM decoding keeps between steps, one row per hypothesis.
public final class PrefixLMCache: IncrementalDecodingCache {
    public let layers: [PrefixLMLayerCache]
    /// Key mask `[B, capacity]`: the prefix's padding mask, then 1 for every generated slot.
    public private(set) var keyMask: [Float]
    /// Real source tokens per row (target step `j` sits at position `sourceLengths[row] + j`).
    public private(set) var sourceLengths: [Int]
    public private(set) var taskLabels: [Int]?
    /// `r` [B, d] of the prefix pass (models with a task level), passed to every layer at every step.
    public private(set) var taskRepresentation: Tensor?
    public private(set) var batchSize: Int
    /// Prefix slots (the padded source length).
    public let prefixLength: Int
    /// Target positions decoded so far.
    public internal(set) var step: Int = 0
    /// Target positions the cache holds.
    public let maxLength: Int
    public var capacity: Int { prefixLength + maxLength }
    public var targetCapacity: Int { maxLength }

    init(layers: [PrefixLMLayerCache], keyMask: [Float], sourceLengths: [Int], taskLabels: [Int]?,
         taskRepresentation: Tensor?, batchSize: Int, prefixLength: Int, maxLength: Int) {
        self.layers = layers; self.keyMask = keyMask; self.sourceLengths = sourceLengths; self.taskLabels = taskLabels
        self.taskRepresentation = taskRepresentation; self.batchSize = batchSize
        self.prefixLength = prefixLength; self.maxLength = maxLength
    }

    public func reorder(_ rows: [Int]) {
        for l in layers { l.reorder(rows) }
        let c = capacity, old = keyMask
        keyMask = rows.flatMap { old[($0 * c)..<(($0 + 1) * c)] }
        sourceLengths = rows.map { sourceLengths[$0] }
        if let t = taskLabels { taskLabels = rows.map { t[$0] } }
        taskRepresentation = taskRepresentation.map { gatherRows($0, rows) }
        batchSize = rows.count
    }
}

extension PrefixLMTransformer: IncrementalDecoder {
    /// Runs the prefix (`[CLS] source` of `batch`; its targets are ignored) once, with no dropout,
    /// and returns a cache for up to `maxLength` target positions: the prefix keys/values of every
    /// layer, each MoE layer's context sum over the prefix, and `r`.
    public func makeCache(for batch: Seq2SeqBatch, maxLength: Int) throws -> PrefixLMCache {
        let c = configuration
        guard maxLength > 0, maxLength <= c.maxPositions else {
            throw TransformerError.invalidArgument("maxLength \(maxLength) must be in 1...\(c.maxPositions)")
        }
        try batch.validate(vocabularySize: c.vocabularySize, maxPositions: c.maxPositions)
        let b = batch.batchSize, s = batch.sourceLength, capacity = s + maxLength
        let q = PrefixLMSequence(batch, targetLength: 0)
        let caches = layers.map {
            PrefixLMLayerCache(batchSize: b, capacity: capacity, dim: c.modelDim,
                               feedForwardState: $0.feedForward.makeIncrementalState(batchSize: b))
        }
        let (_, _, r) = try run(q, taskLabels: batch.taskLabels, training: false, caches: caches)
        var keyMask = [Float](repeating: 1, count: b * capacity)
        for i in 0..<b { for j in 0..<s { keyMask[i * capacity + j] = batch.sourceMask[i * s + j] } }
        return PrefixLMCache(layers: caches, keyMask: keyMask, sourceLengths: q.sourceLengths, taskLabels: batch.taskLabels,
                             taskRepresentation: r, batchSize: b, prefixLength: s, maxLength: maxLength)
    }

    /// Decodes target position `cache.step` of every row (`tokens` [B], BOS first): logits `[B, V]`.
    public func decodeStep(_ tokens: [Int32], cache: PrefixLMCache) throws -> Tensor {
        try validateStep(tokens, cache: cache)
        let b = cache.batchSize, d = configuration.modelDim, v = configuration.vocabularySize
        var y = embed(tokens, positions: cache.sourceLengths.map { $0 + cache.step })
        let slot = cache.prefixLength + cache.step
        for (layer, lc) in zip(layers, cache.layers) {
            y = try layer.step(y, cache: lc, slot: slot, keyMask: cache.keyMask, taskLabels: cache.taskLabels,
                               taskRepresentation: cache.taskRepresentation)
        }
        let out = norm.forward(y, training: false)
        let logits = Tensor(shape: [b, v])
        Embedding.projectForward(logits: logits.pointer, hidden: out.pointer, table: embedding.value.pointer,
                                 n: b, d: d, vocabularySize: v)
        cache.step += 1
        return logits
    }

    /// Greedy decoding of the sources of `batch` (`SequenceSearch.greedy`).
    public func greedyDecode(_ batch: Seq2SeqBatch, bos: Int32, eos: Int32, maxLength: Int) throws -> [[Int32]] {
        try greedyDecode(cache: makeCache(for: batch, maxLength: maxLength), bos: bos, eos: eos, maxLength: maxLength)
    }

    /// Batched beam search over the sources of `batch` (`SequenceSearch.beam`).
    public func beamSearch(_ batch: Seq2SeqBatch, beamSize k: Int, lengthPenalty: Float = 1,
                           bos: Int32, eos: Int32, maxLength: Int) throws -> [[Int32]] {
        try beamSearch(cache: makeCache(for: batch, maxLength: maxLength), beamSize: k, lengthPenalty: lengthPenalty,
                       bos: bos, eos: eos, maxLength: maxLength)
    }
}
