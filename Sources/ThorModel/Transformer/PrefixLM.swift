import ThorTensor

extension SelfAttentionLayer {
    /// One incremental step: `y` [B, d] holds key slot `slot` of every row (prefix slots first);
    /// appends its keys/values to `cache` and attends over slots `0...slot` (`keyMask` [B, capacity]).
    func step(_ y: Tensor, cache: PrefixLMLayerCache, slot: Int, keyMask: [Float], taskLabels: [Int]?,
              taskRepresentation: Tensor?) throws -> Tensor {
        let b = y.rows, d = selfAttention.dim
        let h1 = selfAttentionNorm.forward(y, training: false)
        let (k, v) = selfAttention.keysAndValues(h1)
        cache.append(keys: k, values: v, at: slot)
        let shape = AttentionKernel.Shape(batch: b, queryLength: 1, keyLength: slot + 1, keyCapacity: cache.capacity,
                                          dim: d, heads: selfAttention.heads, queryStart: slot, causal: true,
                                          maskStride: cache.capacity)
        let a = selfAttention.attendCached(query: h1, keys: cache.keys, values: cache.values, shape: shape, keyMask: keyMask)
        let y1 = residualAdd(y, a, mask: nil)
        let h2 = feedForwardNorm.forward(y1, training: false)
        let layout = TokenLayout(side: .decoder, batchSize: b, length: 1, mask: [Float](repeating: 1, count: b),
                                 startPosition: slot, state: cache.feedForwardState, taskLabels: taskLabels,
                                 taskRepresentation: taskRepresentation)
        let f = try feedForward.forward(h2, layout: layout, training: false)
        return residualAdd(y1, f, mask: nil)
    }
}

/// The decoder-only prefix-LM Transformer (SPEC §1, `model.architecture = decoder-only`): one stack of
/// `encoder_layers + decoder_layers` `SelfAttentionLayer`s (`.prefixLM` masking) over the sequence `[CLS] (tag) s_1 … s_n </s> BOS y_1 … y_m`,
/// bidirectional over the source part, causal over the target part; `L_mt` on the target positions only.
///
/// Positions: source token `i` at position `i`, target token `j` at `n + j` (`n` the sentence's real
/// source length), so padding never shifts a position; the sinusoidal table covers `2 · max_positions`
/// (each side is bounded by `max_positions`, as in the encoder-decoder). Embeddings are tied with the
/// output projection and scaled by √d; final LayerNorm `decoder.norm`.
public final class PrefixLMTransformer {
    public let configuration: TransformerConfiguration
    /// Tied embedding / output projection `[V, d]`.
    public let embedding: Parameter
    public let layers: [SelfAttentionLayer]
    public let norm: LayerNorm
    /// The task level, run once per pass at the FFN input of layer `taskLevel.encoderLayer` (the first MoE layer).
    public let taskLevel: TaskLevel?
    /// Every parameter in a fixed order: embedding, layers (norms, attention, task level if held, FFN), final norm.
    public let parameters: [Parameter]
    /// Label smoothing ε of `L_mt`.
    public var labelSmoothing: Float = 0.1
    /// The target-position logits `[B·T, V]` of the last `forward`.
    public private(set) var lastLogits: Tensor?
    /// Sinusoidal table `[2 · maxPositions, d]`.
    public let positions: Tensor
    private var dropoutGenerator: RandomGenerator
    private struct Saved {
        var batch: Seq2SeqBatch, sequence: PrefixLMSequence
        var dropout: Tensor?, targetHidden: Tensor, logits: Tensor, taskRepresentation: Tensor?
    }
    private var saved: Saved?

    /// Builds the model with weights drawn from `seed`; `makeFeedForward(.decoder, layer)` supplies each FFN
    /// sub-block (nil: a dense FFN), `taskLevel` (from `MoEStack`) the task representation `r`.
    public init(configuration c: TransformerConfiguration, seed: UInt64, taskLevel: TaskLevel? = nil,
                makeFeedForward: (Side, Int) throws -> FeedForwardSublayer? = { _, _ in nil }) throws {
        guard c.architecture == .decoderOnly else {
            throw TransformerError.invalidArgument("PrefixLMTransformer needs model.architecture = decoder-only")
        }
        guard c.vocabularySize > 0, c.modelDim > 0, c.hiddenDim > 0, c.heads > 0,
              c.modelDim % c.heads == 0, c.modelDim % 2 == 0 else {
            throw TransformerError.invalidArgument("vocabularySize, modelDim, hiddenDim, heads must be positive; modelDim even and a multiple of heads")
        }
        guard c.dropout >= 0, c.dropout < 1, c.attentionDropout >= 0, c.attentionDropout < 1,
              c.prefixLMLayers >= 1, c.maxPositions > 0, c.padID >= 0, c.padID < c.vocabularySize else {
            throw TransformerError.invalidArgument("need dropout rates in [0, 1), ≥ 1 layer, maxPositions > 0, padID inside the vocabulary")
        }
        let count = c.prefixLMLayers
        if let taskLevel, taskLevel.encoderLayer >= count || taskLevel.modelDim != c.modelDim {
            throw TransformerError.invalidArgument("the task level reads layer \(taskLevel.encoderLayer) at width \(taskLevel.modelDim); "
                                                   + "the model has \(count) layers of width \(c.modelDim)")
        }
        configuration = c
        self.taskLevel = taskLevel
        var rng = RandomGenerator(seed: seed, stream: [0])
        embedding = Parameter(name: "embedding.weight", shape: [c.vocabularySize, c.modelDim])
        rng.fillNormal(embedding.value.pointer, count: embedding.count, std: 1 / Float(c.modelDim).squareRoot())
        var built: [SelfAttentionLayer] = []
        for i in 0..<count {
            let ffn: FeedForwardSublayer
            if let f = try makeFeedForward(.decoder, i) { ffn = f } else {
                var g = RandomGenerator(seed: seed, stream: [2, UInt64(i)])
                ffn = DenseFeedForward(name: Transformer.feedForwardName(side: .decoder, layer: i), modelDim: c.modelDim,
                                       hiddenDim: c.hiddenDim, activation: c.activation, rng: &g)
            }
            var g = RandomGenerator(seed: seed, stream: [6, UInt64(i)])
            built.append(SelfAttentionLayer(index: i, masking: .prefixLM, configuration: c, feedForward: ffn,
                                       taskLevel: taskLevel?.encoderLayer == i ? taskLevel : nil, rng: &g))
        }
        layers = built
        norm = LayerNorm(name: "decoder.norm", dim: c.modelDim)
        parameters = [embedding] + built.flatMap(\.parameters) + norm.parameters
        positions = PositionalEncoding.table(positions: 2 * c.maxPositions, dim: c.modelDim)
        dropoutGenerator = RandomGenerator(seed: seed, stream: [5])
        let names = parameters.map(\.name)
        guard Set(names).count == names.count else {
            throw TransformerError.invalidArgument("duplicate parameter names from the FFN factory")
        }
    }

    /// The dropout generator's state (save it in checkpoints; set it to resume bit-exactly).
    public var dropoutState: UInt64 {
        get { dropoutGenerator.state }
        set { dropoutGenerator.state = newValue }
    }

    public func zeroGradients() { for p in parameters { p.grad.zero() } }

    /// Scaled embeddings + positions `[n, d]` of `ids` at `positions` (one per row).
    func embed(_ ids: [Int32], positions pos: [Int]) -> Tensor {
        let d = configuration.modelDim, n = ids.count
        let x = Tensor(shape: [n, d])
        ids.withUnsafeBufferPointer { idp in
            Embedding.forward(out: x.pointer, ids: idp.baseAddress!, table: embedding.value.pointer,
                              n: n, d: d, scale: Float(d).squareRoot())
        }
        for r in 0..<n { Kernels.add(positions.pointer + pos[r] * d, into: x.pointer + r * d, count: d) }
        return x
    }

    /// Runs the stack on a prefix-LM sequence; returns the final-LayerNormed states `[B·L, d]`, the
    /// embedding dropout mask and `r`. `caches` (a prefix pass) receive keys/values and FFN states.
    func run(_ q: PrefixLMSequence, taskLabels: [Int]?, training: Bool,
             caches: [PrefixLMLayerCache]? = nil) throws -> (output: Tensor, dropout: Tensor?, taskRepresentation: Tensor?) {
        let x = embed(q.ids, positions: q.positions)
        let m = Dropout.apply(x, rate: configuration.dropout, training: training, rng: &dropoutGenerator)
        var layout = TokenLayout(side: .decoder, batchSize: q.batchSize, length: q.length, mask: q.mask, taskLabels: taskLabels)
        layout.prefixLength = q.prefixLength
        var h = x
        for (i, layer) in layers.enumerated() {
            var l = layout
            l.state = caches?[i].feedForwardState
            let out = try layer.forward(h, layout: l, training: training, rng: &dropoutGenerator, keysAndValues: caches?[i])
            h = out.states
            if let r = out.taskRepresentation { layout.taskRepresentation = r }
        }
        return (norm.forward(h, training: training), m, layout.taskRepresentation)
    }

    /// Forward pass over a batch: `L_mt` (label-smoothed CE, mean over non-pad target tokens), the
    /// logits computed on the target positions only. With `training`, dropout is on and activations
    /// are kept for `backward`. Throws on a malformed batch (nothing changes then).
    @discardableResult
    public func forward(_ batch: Seq2SeqBatch, training: Bool) throws -> CrossEntropyResult {
        let c = configuration
        try batch.validate(vocabularySize: c.vocabularySize, maxPositions: c.maxPositions)
        saved = nil
        let q = PrefixLMSequence(batch)
        let (out, drop, r) = try run(q, taskLabels: batch.taskLabels, training: training)
        let b = batch.batchSize, t = batch.targetLength, d = c.modelDim, v = c.vocabularySize
        let hidden = Tensor(shape: [b * t, d])
        for s in 0..<b {
            Kernels.copy(out.pointer + (s * q.length + q.prefixLength) * d, to: hidden.pointer + s * t * d, count: t * d)
        }
        let logits = Tensor(shape: [b * t, v])
        Embedding.projectForward(logits: logits.pointer, hidden: hidden.pointer, table: embedding.value.pointer,
                                 n: b * t, d: d, vocabularySize: v)
        lastLogits = logits
        let result = batch.targetOutput.withUnsafeBufferPointer { tp in
            batch.targetMask.withUnsafeBufferPointer { mp in
                CrossEntropy.forward(logits: logits.pointer, targets: tp.baseAddress!, mask: mp.baseAddress!,
                                     n: b * t, vocabularySize: v, smoothing: labelSmoothing)
            }
        }
        if training {
            saved = Saved(batch: batch, sequence: q, dropout: drop, targetHidden: hidden, logits: logits, taskRepresentation: r)
        }
        return result
    }

    /// Backward of the last training `forward`: accumulates `lossScale · ∂L_mt/∂θ` (and the MoE layers'
    /// auxiliary-loss gradients) into every parameter's `grad`; `∂L/∂r` is summed over the layers in
    /// backward order and handed to the task level's backward.
    public func backward(lossScale: Float = 1) throws {
        guard let s = saved else { throw TransformerError.noTrainingForward }
        saved = nil
        let c = configuration, batch = s.batch, q = s.sequence
        let b = batch.batchSize, t = batch.targetLength, d = c.modelDim, v = c.vocabularySize
        batch.targetOutput.withUnsafeBufferPointer { tp in
            batch.targetMask.withUnsafeBufferPointer { mp in
                CrossEntropy.backward(dlogits: s.logits.pointer, logits: s.logits.pointer, targets: tp.baseAddress!,
                                      mask: mp.baseAddress!, n: b * t, vocabularySize: v,
                                      smoothing: labelSmoothing, scale: lossScale)
            }
        }
        let dHidden = Tensor(shape: [b * t, d])
        Embedding.projectBackward(dhidden: dHidden.pointer, dtable: embedding.grad.pointer, dlogits: s.logits.pointer,
                                  hidden: s.targetHidden.pointer, table: embedding.value.pointer,
                                  n: b * t, d: d, vocabularySize: v)
        let dOut = Tensor(shape: [q.rows, d])
        for i in 0..<b {
            Kernels.copy(dHidden.pointer + i * t * d, to: dOut.pointer + (i * q.length + q.prefixLength) * d, count: t * d)
        }
        var dx = Tensor(shape: [q.rows, d])
        norm.backward(dOut, into: dx)
        let taskGradient = s.taskRepresentation.map { Tensor(shape: $0.shape) }
        for layer in layers.reversed() {
            let g = try layer.backward(dx, taskGradient: taskGradient)
            dx = g.states
            if let dr = g.taskRepresentation, let taskGradient {
                Kernels.add(dr.pointer, into: taskGradient.pointer, count: taskGradient.count)
            }
        }
        Dropout.applyBackward(dx, mask: s.dropout)
        q.ids.withUnsafeBufferPointer { ip in
            Embedding.backward(dtable: embedding.grad.pointer, dout: dx.pointer, ids: ip.baseAddress!,
                               n: q.rows, d: d, scale: Float(d).squareRoot())
        }
    }
}

/// A batch laid out as prefix-LM sequences: per sentence the `S` source slots (padded source), then
/// the `T` target-input slots (`BOS y_1 … y_m`, padded); `mask` marks real tokens; source slot `i` sits
/// at position `i`, target slot `j` at `n + j` (`n` = real source tokens of the sentence).
struct PrefixLMSequence {
    let batchSize: Int, prefixLength: Int, length: Int
    let ids: [Int32], mask: [Float], positions: [Int]
    /// Real source tokens per sentence.
    let sourceLengths: [Int]
    var rows: Int { batchSize * length }

    /// Source and target input of `batch`.
    init(_ batch: Seq2SeqBatch) {
        self.init(batch, targetLength: batch.targetLength)
    }

    /// The source of `batch`, followed by `targetLength` target slots of `batch` (0: the prefix alone).
    init(_ batch: Seq2SeqBatch, targetLength t: Int) {
        let b = batch.batchSize, s = batch.sourceLength, l = s + t
        batchSize = b; prefixLength = s; length = l
        var ids = [Int32](repeating: 0, count: b * l), mask = [Float](repeating: 0, count: b * l)
        var pos = [Int](repeating: 0, count: b * l), lengths = [Int](repeating: 0, count: b)
        for i in 0..<b {
            var n = 0
            for j in 0..<s {
                ids[i * l + j] = batch.source[i * s + j]; mask[i * l + j] = batch.sourceMask[i * s + j]
                pos[i * l + j] = j
                if batch.sourceMask[i * s + j] != 0 { n += 1 }
            }
            for j in 0..<t {
                ids[i * l + s + j] = batch.targetInput[i * batch.targetLength + j]
                mask[i * l + s + j] = batch.targetMask[i * batch.targetLength + j]
                pos[i * l + s + j] = n + j
            }
            lengths[i] = n
        }
        self.ids = ids; self.mask = mask; positions = pos; sourceLengths = lengths
    }
}
