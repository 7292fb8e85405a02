import ThorTensor

/// One pre-LN decoder layer:
/// `y = y + Dropout(CausalSelfAttn(LN(y)))`, `y = y + Dropout(CrossAttn(LN(y), enc))`,
/// `y = y + Dropout(FFN(LN(y)))`. States are `[B·T, d]`, sentence-major.
public final class DecoderLayer {
    public let index: Int
    public let selfAttentionNorm: LayerNorm
    public let selfAttention: MultiHeadAttention
    public let crossAttentionNorm: LayerNorm
    public let crossAttention: MultiHeadAttention
    public let feedForwardNorm: LayerNorm
    public let feedForward: FeedForwardSublayer
    public let dropout: Float, attentionDropout: Float
    private var masks: (selfAttention: Tensor?, crossAttention: Tensor?, feedForward: Tensor?)?

    /// Parameter prefix `decoder.layers.<index>`.
    public init(index: Int, configuration c: TransformerConfiguration, feedForward: FeedForwardSublayer,
                rng: inout RandomGenerator) {
        self.index = index
        let p = "decoder.layers.\(index)"
        selfAttentionNorm = LayerNorm(name: "\(p).self_attn_norm", dim: c.modelDim)
        selfAttention = MultiHeadAttention(name: "\(p).self_attn", dim: c.modelDim, heads: c.heads, rng: &rng)
        crossAttentionNorm = LayerNorm(name: "\(p).cross_attn_norm", dim: c.modelDim)
        crossAttention = MultiHeadAttention(name: "\(p).cross_attn", dim: c.modelDim, heads: c.heads, rng: &rng)
        feedForwardNorm = LayerNorm(name: "\(p).ffn_norm", dim: c.modelDim)
        self.feedForward = feedForward
        dropout = c.dropout; attentionDropout = c.attentionDropout
    }

    public var parameters: [Parameter] {
        selfAttentionNorm.parameters + selfAttention.parameters + crossAttentionNorm.parameters
            + crossAttention.parameters + feedForwardNorm.parameters + feedForward.parameters
    }

    /// `y` [B·T, d], `encoderOutput` [B·S, d] with `sourceMask` [B·S] → [B·T, d].
    public func forward(_ y: Tensor, layout: TokenLayout, encoderOutput: Tensor, sourceMask: [Float],
                        sourceLength: Int, training: Bool, rng: inout RandomGenerator) throws -> Tensor {
        let d = selfAttention.dim, heads = selfAttention.heads
        let selfShape = AttentionKernel.Shape(batch: layout.batchSize, queryLength: layout.length,
                                              keyLength: layout.length, dim: d, heads: heads, causal: true)
        let crossShape = AttentionKernel.Shape(batch: layout.batchSize, queryLength: layout.length,
                                               keyLength: sourceLength, dim: d, heads: heads, causal: false)
        let h1 = selfAttentionNorm.forward(y, training: training)
        let a1 = selfAttention.forward(query: h1, keyValue: nil, shape: selfShape, keyMask: layout.mask,
                                       dropout: attentionDropout, training: training, rng: &rng)
        let m1 = Dropout.mask(count: a1.count, rate: dropout, training: training, rng: &rng)
        let y1 = residualAdd(y, a1, mask: m1)
        let h2 = crossAttentionNorm.forward(y1, training: training)
        let a2 = crossAttention.forward(query: h2, keyValue: encoderOutput, shape: crossShape, keyMask: sourceMask,
                                        dropout: attentionDropout, training: training, rng: &rng)
        let m2 = Dropout.mask(count: a2.count, rate: dropout, training: training, rng: &rng)
        let y2 = residualAdd(y1, a2, mask: m2)
        let h3 = feedForwardNorm.forward(y2, training: training)
        let f = try feedForward.forward(h3, layout: layout, training: training)
        let m3 = Dropout.mask(count: f.count, rate: dropout, training: training, rng: &rng)
        masks = training ? (m1, m2, m3) : nil
        return residualAdd(y2, f, mask: m3)
    }

    /// `∂L/∂out` → `∂L/∂y` and the FFN sub-block's `∂L/∂r` (if it read `r`); adds
    /// `∂L/∂encoderOutput` into `encoderGradient` [B·S, d].
    public func backward(_ gradOutput: Tensor, encoderGradient: Tensor) throws -> LayerOutput {
        guard let m = masks else { throw TransformerError.noTrainingForward }
        masks = nil
        let dY2 = Tensor(copying: gradOutput)
        let f = try feedForward.backward(maskedCopy(gradOutput, mask: m.feedForward))
        feedForwardNorm.backward(f.input, into: dY2)
        let cross = crossAttention.backward(maskedCopy(dY2, mask: m.crossAttention))
        Kernels.add(cross.keyValue!.pointer, into: encoderGradient.pointer, count: encoderGradient.count)
        let dY1 = Tensor(copying: dY2)
        crossAttentionNorm.backward(cross.query, into: dY1)
        let dH1 = selfAttention.backward(maskedCopy(dY1, mask: m.selfAttention)).query
        let dY = Tensor(copying: dY1)
        selfAttentionNorm.backward(dH1, into: dY)
        return LayerOutput(states: dY, taskRepresentation: f.taskRepresentation)
    }

    /// One incremental decoding step. `y` [B, d] holds position `step` of every sentence
    /// (`taskRepresentation`: their `r` [B, d] from the encoder pass, if the model has a task level);
    /// appends this step's keys/values to `cache` and returns the layer output [B, d].
    public func step(_ y: Tensor, cache: DecoderLayerCache, step: Int, sourceMask: [Float],
                     taskLabels: [Int]?, taskRepresentation: Tensor?) throws -> Tensor {
        let b = y.rows, d = selfAttention.dim, heads = selfAttention.heads
        let h1 = selfAttentionNorm.forward(y, training: false)
        let (k, v) = selfAttention.keysAndValues(h1)
        cache.append(keys: k, values: v, at: step)
        let selfShape = AttentionKernel.Shape(batch: b, queryLength: 1, keyLength: step + 1,
                                              keyCapacity: cache.capacity, dim: d, heads: heads,
                                              queryStart: step, causal: true)
        let a1 = selfAttention.attendCached(query: h1, keys: cache.selfKeys, values: cache.selfValues,
                                            shape: selfShape, keyMask: nil)
        let y1 = residualAdd(y, a1, mask: nil)
        let h2 = crossAttentionNorm.forward(y1, training: false)
        let crossShape = AttentionKernel.Shape(batch: b, queryLength: 1, keyLength: cache.sourceLength,
                                               dim: d, heads: heads, causal: false)
        let a2 = crossAttention.attendCached(query: h2, keys: cache.crossKeys, values: cache.crossValues,
                                             shape: crossShape, keyMask: sourceMask)
        let y2 = residualAdd(y1, a2, mask: nil)
        let h3 = feedForwardNorm.forward(y2, training: false)
        let layout = TokenLayout(side: .decoder, batchSize: b, length: 1, mask: [Float](repeating: 1, count: b),
                                 startPosition: step, state: cache.feedForwardState, taskLabels: taskLabels,
                                 taskRepresentation: taskRepresentation)
        let f = try feedForward.forward(h3, layout: layout, training: false)
        return residualAdd(y2, f, mask: nil)
    }
}
