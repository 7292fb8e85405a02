import ThorTensor

/// The dense pre-LN encoder-decoder Transformer (SPEC §1), with FFN sub-blocks
/// behind `FeedForwardSublayer` so MoE layers plug in through `makeFeedForward`.
///
/// Embeddings (`embedding.weight` [V, d]) are shared by source, target and the output
/// projection (`logits = h · Eᵀ`, no bias) and scaled by √d; sinusoidal positions are
/// added; dropout on embeddings+positions, residual branches and attention weights.
/// Final LayerNorms `encoder.norm`, `decoder.norm` close both stacks.
public final class Transformer {
    public let configuration: TransformerConfiguration
    /// Tied embedding / output projection `[V, d]`.
    public let embedding: Parameter
    public let encoderLayers: [SelfAttentionLayer]
    public let decoderLayers: [DecoderLayer]
    public let encoderNorm: LayerNorm
    public let decoderNorm: LayerNorm
    /// The task level (THOR's task predictor and `E_task`), run once per pass at the FFN
    /// input of encoder layer `taskLevel.encoderLayer`; nil in models without one.
    public let taskLevel: TaskLevel?
    /// Every parameter in a fixed order: embedding, encoder layers, encoder norm,
    /// decoder layers, decoder norm (each layer: norms, attention, the task level's if it holds it,
    /// then its FFN sublayer's).
    public let parameters: [Parameter]
    /// Label smoothing ε of `L_mt` (SPEC §3: 0.1).
    public var labelSmoothing: Float = 0.1
    /// The logits `[B·T, V]` of the last `forward` (overwritten by `backward` with their gradient).
    public private(set) var lastLogits: Tensor?

    /// Sinusoidal table `[maxPositions, d]`.
    public let positions: Tensor
    private var dropoutGenerator: RandomGenerator
    private struct Saved {
        var batch: Seq2SeqBatch
        var sourceDropout: Tensor?, targetDropout: Tensor?
        var decoderOutput: Tensor, logits: Tensor, encoderOutput: Tensor
        var taskRepresentation: Tensor?
    }
    private var saved: Saved?

    /// Parameter-name prefix of the FFN sublayer of layer `index` on `side`
    /// (`encoder.layers.1.ffn`); factories should name their parameters under it.
    public static func feedForwardName(side: Side, layer index: Int) -> String {
        "\(side.rawValue).layers.\(index).ffn"
    }

    /// Builds the model with weights drawn from `seed`. `makeFeedForward(side, layer)` supplies
    /// each FFN sub-block; nil gives a `DenseFeedForward`. `taskLevel` (from `MoEStack`) computes the
    /// task representation `r` that its MoE sub-blocks route with.
    public init(configuration c: TransformerConfiguration, seed: UInt64, taskLevel: TaskLevel? = nil,
                makeFeedForward: (Side, Int) throws -> FeedForwardSublayer? = { _, _ in nil }) throws {
        guard c.architecture == .encoderDecoder else {
            throw TransformerError.invalidArgument("Transformer is the encoder-decoder; model.architecture = \(c.architecture.rawValue) is PrefixLMTransformer")
        }
        guard c.vocabularySize > 0, c.modelDim > 0, c.hiddenDim > 0, c.heads > 0 else {
            throw TransformerError.invalidArgument("vocabularySize, modelDim, hiddenDim and heads must be positive")
        }
        guard c.modelDim % c.heads == 0, c.modelDim % 2 == 0 else {
            throw TransformerError.invalidArgument("modelDim \(c.modelDim) must be even and a multiple of heads \(c.heads)")
        }
        guard c.dropout >= 0, c.dropout < 1, c.attentionDropout >= 0, c.attentionDropout < 1 else {
            throw TransformerError.invalidArgument("dropout rates must be in [0, 1)")
        }
        guard c.encoderLayers >= 0, c.decoderLayers >= 1, c.maxPositions > 0,
              c.padID >= 0, c.padID < c.vocabularySize else {
            throw TransformerError.invalidArgument("need decoderLayers ≥ 1, maxPositions > 0, padID inside the vocabulary")
        }
        if let taskLevel, taskLevel.encoderLayer >= c.encoderLayers || taskLevel.modelDim != c.modelDim {
            throw TransformerError.invalidArgument("the task level reads encoder layer \(taskLevel.encoderLayer) at width \(taskLevel.modelDim); "
                                                   + "the model has \(c.encoderLayers) encoder layers of width \(c.modelDim)")
        }
        configuration = c
        self.taskLevel = taskLevel
        var rng = RandomGenerator(seed: seed, stream: [0])
        embedding = Parameter(name: "embedding.weight", shape: [c.vocabularySize, c.modelDim])
        rng.fillNormal(embedding.value.pointer, count: embedding.count, std: 1 / Float(c.modelDim).squareRoot())
        func ffn(_ side: Side, _ i: Int) throws -> FeedForwardSublayer {
            if let f = try makeFeedForward(side, i) { return f }
            var g = RandomGenerator(seed: seed, stream: [side == .encoder ? 1 : 2, UInt64(i)])
            return DenseFeedForward(name: Transformer.feedForwardName(side: side, layer: i), modelDim: c.modelDim,
                                    hiddenDim: c.hiddenDim, activation: c.activation, rng: &g)
        }
        var enc: [SelfAttentionLayer] = []
        for i in 0..<c.encoderLayers {
            var g = RandomGenerator(seed: seed, stream: [3, UInt64(i)])
            enc.append(SelfAttentionLayer(index: i, configuration: c, feedForward: try ffn(.encoder, i),
                                    taskLevel: taskLevel?.encoderLayer == i ? taskLevel : nil, rng: &g))
        }
        var dec: [DecoderLayer] = []
        for i in 0..<c.decoderLayers {
            var g = RandomGenerator(seed: seed, stream: [4, UInt64(i)])
            dec.append(DecoderLayer(index: i, configuration: c, feedForward: try ffn(.decoder, i), rng: &g))
        }
        encoderLayers = enc; decoderLayers = dec
        encoderNorm = LayerNorm(name: "encoder.norm", dim: c.modelDim)
        decoderNorm = LayerNorm(name: "decoder.norm", dim: c.modelDim)
        parameters = [embedding] + enc.flatMap(\.parameters) + encoderNorm.parameters
            + dec.flatMap(\.parameters) + decoderNorm.parameters
        positions = PositionalEncoding.table(positions: c.maxPositions, dim: c.modelDim)
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

    /// Zeroes every parameter gradient.
    public func zeroGradients() { for p in parameters { p.grad.zero() } }

    /// `ids` [B, L] → scaled embeddings + positions [B·L, d] (positions from `start`).
    func embed(_ ids: [Int32], batch: Int, length: Int, start: Int = 0) -> Tensor {
        let d = configuration.modelDim
        let x = Tensor(shape: [batch * length, d])
        ids.withUnsafeBufferPointer { idp in
            Embedding.forward(out: x.pointer, ids: idp.baseAddress!, table: embedding.value.pointer,
                              n: batch * length, d: d, scale: Float(d).squareRoot())
        }
        PositionalEncoding.add(to: x.pointer, table: positions.pointer, batch: batch, length: length,
                               start: start, d: d)
        return x
    }

    /// Encoder stack on `batch.source`: the final-LayerNormed states [B·S, d], the embedding
    /// dropout mask and the task representation `r` [B, d] (nil without a task level).
    func runEncoder(_ batch: Seq2SeqBatch, training: Bool) throws
        -> (output: Tensor, dropout: Tensor?, taskRepresentation: Tensor?) {
        let x = embed(batch.source, batch: batch.batchSize, length: batch.sourceLength)
        let m = Dropout.apply(x, rate: configuration.dropout, training: training, rng: &dropoutGenerator)
        var layout = TokenLayout(side: .encoder, batchSize: batch.batchSize, length: batch.sourceLength,
                                 mask: batch.sourceMask, taskLabels: batch.taskLabels)
        var h = x
        for layer in encoderLayers {
            let out = try layer.forward(h, layout: layout, training: training, rng: &dropoutGenerator)
            h = out.states
            if let r = out.taskRepresentation { layout.taskRepresentation = r }
        }
        return (encoderNorm.forward(h, training: training), m, layout.taskRepresentation)
    }

    /// Forward pass over a batch: `L_mt` (label-smoothed CE, mean over non-pad targets).
    /// With `training`, dropout is on and activations are kept for `backward` (any later
    /// `forward` replaces them; an evaluation forward drops them).
    /// Throws on a malformed batch (nothing changes then).
    @discardableResult
    public func forward(_ batch: Seq2SeqBatch, training: Bool) throws -> CrossEntropyResult {
        let c = configuration
        try batch.validate(vocabularySize: c.vocabularySize, maxPositions: c.maxPositions)
        saved = nil
        let (enc, srcDrop, r) = try runEncoder(batch, training: training)
        let b = batch.batchSize, t = batch.targetLength, d = c.modelDim, v = c.vocabularySize
        let y0 = embed(batch.targetInput, batch: b, length: t)
        let tgtDrop = Dropout.apply(y0, rate: c.dropout, training: training, rng: &dropoutGenerator)
        let layout = TokenLayout(side: .decoder, batchSize: b, length: t, mask: batch.targetMask,
                                 taskLabels: batch.taskLabels, taskRepresentation: r)
        var y = y0
        for layer in decoderLayers {
            y = try layer.forward(y, layout: layout, encoderOutput: enc, sourceMask: batch.sourceMask,
                                  sourceLength: batch.sourceLength, training: training, rng: &dropoutGenerator)
        }
        let out = decoderNorm.forward(y, training: training)
        let logits = reusableLogits(rows: b * t)
        Embedding.projectForward(logits: logits.pointer, hidden: out.pointer, table: embedding.value.pointer,
                                 n: b * t, d: d, vocabularySize: v)
        lastLogits = logits
        let softmax = training ? softmaxBuffers(rows: b * t) : nil
        let result = batch.targetOutput.withUnsafeBufferPointer { tp in
            batch.targetMask.withUnsafeBufferPointer { mp in
                if let softmax {
                    CrossEntropy.forward(logits: logits.pointer, targets: tp.baseAddress!, mask: mp.baseAddress!,
                                         n: b * t, vocabularySize: v, smoothing: labelSmoothing,
                                         exponentials: softmax.exponentials.pointer,
                                         inverseSums: softmax.inverseSums.pointer, threads: Parallel.processors)
                } else {
                    CrossEntropy.forward(logits: logits.pointer, targets: tp.baseAddress!, mask: mp.baseAddress!,
                                         n: b * t, vocabularySize: v, smoothing: labelSmoothing)
                }
            }
        }
        if training {
            saved = Saved(batch: batch, sourceDropout: srcDrop, targetDropout: tgtDrop,
                          decoderOutput: out, logits: logits, encoderOutput: enc, taskRepresentation: r)
        }
        return result
    }

    /// The logits tensor `[rows, V]` of a forward: the last one's storage again when nobody else
    /// holds it and it has the size (no 32 MB allocation, zero-fill and page faults per step at
    /// V = 8000), else a new one. Every element is overwritten by the output projection.
    private func reusableLogits(rows: Int) -> Tensor {
        let v = configuration.vocabularySize
        if lastLogits?.count == rows * v, isKnownUniquelyReferenced(&lastLogits) {
            let l = lastLogits!
            lastLogits = nil
            l.reshape([rows, v])
            return l
        }
        lastLogits = nil
        return Tensor(uninitializedShape: [rows, v])
    }

    /// `exp(logit − max)` [rows, V] and `1/Σ` [rows] of the training forward's softmax, kept for
    /// `backward` (reused across steps).
    private var softmax: (exponentials: Tensor, inverseSums: Tensor)?

    private func softmaxBuffers(rows: Int) -> (exponentials: Tensor, inverseSums: Tensor) {
        let v = configuration.vocabularySize
        if let s = softmax, s.exponentials.count >= rows * v, s.inverseSums.count >= rows { return s }
        let s = (exponentials: Tensor(uninitializedShape: [rows * v]), inverseSums: Tensor(uninitializedShape: [rows]))
        softmax = s
        return s
    }

    /// Backward of the last training `forward`: accumulates `lossScale · ∂L_mt/∂θ` into every
    /// parameter's `grad` (FFN sublayers included, through their `backward`). The `∂L/∂r` of every
    /// MoE sub-block is summed in backward order and handed to the task level's backward.
    public func backward(lossScale: Float = 1) throws {
        guard let s = saved else { throw TransformerError.noTrainingForward }
        saved = nil
        let c = configuration, batch = s.batch
        let b = batch.batchSize, t = batch.targetLength, sl = batch.sourceLength
        let d = c.modelDim, v = c.vocabularySize, scale = Float(d).squareRoot()
        guard let softmax else { preconditionFailure("a training forward keeps the softmax") }
        batch.targetOutput.withUnsafeBufferPointer { tp in
            batch.targetMask.withUnsafeBufferPointer { mp in
                CrossEntropy.backward(dlogits: s.logits.pointer, exponentials: softmax.exponentials.pointer,
                                      inverseSums: softmax.inverseSums.pointer, targets: tp.baseAddress!,
                                      mask: mp.baseAddress!, n: b * t, vocabularySize: v,
                                      smoothing: labelSmoothing, scale: lossScale, threads: Parallel.processors)
            }
        }
        let dOut = Tensor(shape: [b * t, d])
        Embedding.projectBackward(dhidden: dOut.pointer, dtable: embedding.grad.pointer, dlogits: s.logits.pointer,
                                  hidden: s.decoderOutput.pointer, table: embedding.value.pointer,
                                  n: b * t, d: d, vocabularySize: v)
        var dy = Tensor(shape: [b * t, d])
        decoderNorm.backward(dOut, into: dy)
        let dEnc = Tensor(shape: [b * sl, d])
        // ∂L/∂r gathered from every sub-block that read r, for the task level's backward.
        let taskGradient = s.taskRepresentation.map { Tensor(shape: $0.shape) }
        func gather(_ dr: Tensor?) {
            guard let dr, let taskGradient else { return }
            Kernels.add(dr.pointer, into: taskGradient.pointer, count: taskGradient.count)
        }
        for layer in decoderLayers.reversed() {
            let g = try layer.backward(dy, encoderGradient: dEnc)
            dy = g.states
            gather(g.taskRepresentation)
        }
        Dropout.applyBackward(dy, mask: s.targetDropout)
        batch.targetInput.withUnsafeBufferPointer { ip in
            Embedding.backward(dtable: embedding.grad.pointer, dout: dy.pointer, ids: ip.baseAddress!,
                               n: b * t, d: d, scale: scale)
        }
        var dx = Tensor(shape: [b * sl, d])
        encoderNorm.backward(dEnc, into: dx)
        for layer in encoderLayers.reversed() {
            let g = try layer.backward(dx, taskGradient: taskGradient)
            dx = g.states
            gather(g.taskRepresentation)
        }
        Dropout.applyBackward(dx, mask: s.sourceDropout)
        batch.source.withUnsafeBufferPointer { ip in
            Embedding.backward(dtable: embedding.grad.pointer, dout: dx.pointer, ids: ip.baseAddress!,
                               n: b * sl, d: d, scale: scale)
        }
    }
}
