import ThorTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Encoder states of a batch of sources, ready for decoding.
public struct EncodedSource {
    /// Final-LayerNormed encoder states `[B·S, d]`.
    public var states: Tensor
    public var sourceMask: [Float]
    public var batchSize: Int
    public var sourceLength: Int
    public var taskLabels: [Int]?
    /// The task representation `r` [B, d] of this encoder pass (models with a task level), so a
    /// source decodes the same whatever is encoded or run after it.
    public var taskRepresentation: Tensor?
}

/// The per-layer cache of incremental decoding: self-attention keys/values of the
/// positions decoded so far, the cross-attention keys/values of the encoder states,
/// and the FFN sublayer's own typed `IncrementalState` (nil when it keeps none).
public final class DecoderLayerCache {
    /// `[B, capacity, d]`; rows `0 ..< step` of each sentence are filled.
    public private(set) var selfKeys: Tensor, selfValues: Tensor
    /// `[B, S, d]`.
    public private(set) var crossKeys: Tensor, crossValues: Tensor
    public let feedForwardState: IncrementalState?
    public let capacity: Int, sourceLength: Int

    init(selfKeys: Tensor, selfValues: Tensor, crossKeys: Tensor, crossValues: Tensor,
         feedForwardState: IncrementalState?, capacity: Int, sourceLength: Int) {
        self.selfKeys = selfKeys; self.selfValues = selfValues
        self.crossKeys = crossKeys; self.crossValues = crossValues
        self.feedForwardState = feedForwardState; self.capacity = capacity; self.sourceLength = sourceLength
    }

    /// Writes this step's `keys`/`values` `[B, d]` at position `step`.
    func append(keys: Tensor, values: Tensor, at step: Int) {
        let d = keys.columns, b = keys.rows
        for i in 0..<b {
            Kernels.copy(keys.pointer + i * d, to: selfKeys.pointer + (i * capacity + step) * d, count: d)
            Kernels.copy(values.pointer + i * d, to: selfValues.pointer + (i * capacity + step) * d, count: d)
        }
    }

    func reorder(_ rows: [Int]) {
        selfKeys = gatherRows(selfKeys, rows); selfValues = gatherRows(selfValues, rows)
        crossKeys = gatherRows(crossKeys, rows); crossValues = gatherRows(crossValues, rows)
        feedForwardState?.reorder(rows)
    }
}

/// `out[i] = t[rows[i]]` along the first dimension.
func gatherRows(_ t: Tensor, _ rows: [Int]) -> Tensor {
    guard let first = t.shape.first, first > 0 else { return t }
    let rowSize = t.count / first
    var shape = t.shape
    shape[0] = rows.count
    let out = Tensor(shape: shape)
    for (i, r) in rows.enumerated() {
        precondition(r >= 0 && r < first, "reorder index \(r) outside 0..<\(first)")
        Kernels.copy(t.pointer + r * rowSize, to: out.pointer + i * rowSize, count: rowSize)
    }
    return out
}

/// Everything incremental decoding keeps between steps, one row per hypothesis.
public final class DecoderCache: IncrementalDecodingCache {
    public let layers: [DecoderLayerCache]
    public private(set) var sourceMask: [Float]
    public private(set) var taskLabels: [Int]?
    /// `r` [B, d] of every row (models with a task level), passed to every decoder layer.
    public private(set) var taskRepresentation: Tensor?
    public private(set) var batchSize: Int
    public let sourceLength: Int
    /// Positions decoded so far (the next `decodeStep` decodes position `step`).
    public internal(set) var step: Int = 0
    public let capacity: Int
    public var targetCapacity: Int { capacity }

    init(layers: [DecoderLayerCache], sourceMask: [Float], taskLabels: [Int]?, taskRepresentation: Tensor?,
         batchSize: Int, sourceLength: Int, capacity: Int) {
        self.layers = layers; self.sourceMask = sourceMask; self.taskLabels = taskLabels
        self.taskRepresentation = taskRepresentation
        self.batchSize = batchSize; self.sourceLength = sourceLength; self.capacity = capacity
    }

    /// Row `i` of the new cache is row `rows[i]` of the old one (beam search).
    public func reorder(_ rows: [Int]) {
        for l in layers { l.reorder(rows) }
        let s = sourceLength
        let old = sourceMask
        sourceMask = [Float](unsafeUninitializedCapacity: rows.count * s) { out, count in
            old.withUnsafeBufferPointer { src in
                for (i, r) in rows.enumerated() {
                    if s > 0 { (out.baseAddress! + i * s).initialize(from: src.baseAddress! + r * s, count: s) }
                }
            }
            count = rows.count * s
        }
        if let t = taskLabels { taskLabels = rows.map { t[$0] } }
        taskRepresentation = taskRepresentation.map { gatherRows($0, rows) }
        batchSize = rows.count
    }
}

extension Transformer: IncrementalDecoder {
    /// Runs the encoder once (no dropout).
    public func encode(source: [Int32], sourceMask: [Float], batchSize: Int, sourceLength: Int,
                       taskLabels: [Int]? = nil) throws -> EncodedSource {
        let b = Seq2SeqBatch(batchSize: batchSize, sourceLength: sourceLength, targetLength: 1, source: source,
                             sourceMask: sourceMask, targetInput: [Int32](repeating: 0, count: batchSize),
                             targetOutput: [Int32](repeating: 0, count: batchSize),
                             targetMask: [Float](repeating: 0, count: batchSize), taskLabels: taskLabels)
        return try encode(b)
    }

    /// Runs the encoder on the source side of `batch` (no dropout).
    public func encode(_ batch: Seq2SeqBatch) throws -> EncodedSource {
        try batch.validate(vocabularySize: configuration.vocabularySize, maxPositions: configuration.maxPositions)
        let (states, _, r) = try runEncoder(batch, training: false)
        return EncodedSource(states: states, sourceMask: batch.sourceMask, batchSize: batch.batchSize,
                             sourceLength: batch.sourceLength, taskLabels: batch.taskLabels,
                             taskRepresentation: r)
    }

    /// A fresh cache for up to `maxLength` decoder positions, with the cross-attention
    /// keys/values of `encoded` precomputed.
    public func makeCache(for encoded: EncodedSource, maxLength: Int) throws -> DecoderCache {
        guard maxLength > 0, maxLength <= configuration.maxPositions else {
            throw TransformerError.invalidArgument("maxLength \(maxLength) must be in 1...\(configuration.maxPositions)")
        }
        let b = encoded.batchSize, s = encoded.sourceLength, d = configuration.modelDim
        if taskLevel != nil {
            guard let r = encoded.taskRepresentation else {
                throw TransformerError.invalidArgument("the encoded source has no task representation r: encode it with this model")
            }
            guard r.shape == [b, d] else {
                throw TransformerError.invalidArgument("task representation \(r.shape), expected [\(b), \(d)]")
            }
        }
        let layers = decoderLayers.map { layer -> DecoderLayerCache in
            let (k, v) = layer.crossAttention.keysAndValues(encoded.states)
            k.reshape([b, s, d]); v.reshape([b, s, d])
            return DecoderLayerCache(selfKeys: Tensor(shape: [b, maxLength, d]), selfValues: Tensor(shape: [b, maxLength, d]),
                                     crossKeys: k, crossValues: v,
                                     feedForwardState: layer.feedForward.makeIncrementalState(batchSize: b),
                                     capacity: maxLength, sourceLength: s)
        }
        return DecoderCache(layers: layers, sourceMask: encoded.sourceMask, taskLabels: encoded.taskLabels,
                            taskRepresentation: encoded.taskRepresentation.map { Tensor(copying: $0) },
                            batchSize: b, sourceLength: s, capacity: maxLength)
    }

    /// Decodes position `cache.step` for every row: `tokens` [B] are the inputs at that
    /// position (BOS first). Returns logits `[B, V]` and advances the cache.
    public func decodeStep(_ tokens: [Int32], cache: DecoderCache) throws -> Tensor {
        try validateStep(tokens, cache: cache)
        let b = cache.batchSize, d = configuration.modelDim, v = configuration.vocabularySize
        var y = embed(tokens, batch: b, length: 1, start: cache.step)
        for (layer, lc) in zip(decoderLayers, cache.layers) {
            y = try layer.step(y, cache: lc, step: cache.step, sourceMask: cache.sourceMask, taskLabels: cache.taskLabels,
                               taskRepresentation: cache.taskRepresentation)
        }
        let out = decoderNorm.forward(y, training: false)
        let logits = Tensor(shape: [b, v])
        Embedding.projectForward(logits: logits.pointer, hidden: out.pointer, table: embedding.value.pointer,
                                 n: b, d: d, vocabularySize: v)
        cache.step += 1
        return logits
    }

    /// Greedy decoding (`SequenceSearch.greedy`) from `encoded`.
    public func greedyDecode(_ encoded: EncodedSource, bos: Int32, eos: Int32, maxLength: Int) throws -> [[Int32]] {
        try greedyDecode(cache: makeCache(for: encoded, maxLength: maxLength), bos: bos, eos: eos, maxLength: maxLength)
    }

    /// Batched beam search (`SequenceSearch.beam`) from `encoded`.
    public func beamSearch(_ encoded: EncodedSource, beamSize k: Int, lengthPenalty: Float = 1,
                           bos: Int32, eos: Int32, maxLength: Int) throws -> [[Int32]] {
        try beamSearch(cache: makeCache(for: encoded, maxLength: maxLength), beamSize: k, lengthPenalty: lengthPenalty,
                       bos: bos, eos: eos, maxLength: maxLength)
    }
}
