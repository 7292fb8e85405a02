import ThorTensor

/// `out = base + branch ⊙ mask` (mask nil: plain sum) as a new tensor; `branch` is not modified.
func residualAdd(_ base: Tensor, _ branch: Tensor, mask: Tensor?) -> Tensor {
    let out = Tensor(copying: base)
    let o = out.pointer, b = branch.pointer, n = out.count
    if let mask {
        let m = mask.pointer
        for i in 0..<n { o[i] += b[i] * m[i] }
    } else {
        Kernels.add(b, into: o, count: n)
    }
    return out
}

/// `grad ⊙ mask` as a new tensor (a copy of `grad` for a nil mask).
func maskedCopy(_ grad: Tensor, mask: Tensor?) -> Tensor {
    let out = Tensor(uninitializedShape: grad.shape)
    if let mask {
        Dropout.backward(dinp: out.pointer, dout: grad.pointer, mask: mask.pointer, count: grad.count)
    } else {
        out.copy(from: grad)
    }
    return out
}

/// What an encoder or decoder layer's pass returns: its output states and, from the layer
/// that runs the task level (forward) or whose FFN sub-block read `r` (backward), the task
/// representation or its gradient.
public struct LayerOutput {
    /// Output states (forward) or `∂L/∂input` (backward).
    public var states: Tensor
    /// `r` [B, d] computed by this layer's task level (forward), or this layer's `∂L/∂r` (backward).
    public var taskRepresentation: Tensor?
}

/// How a `SelfAttentionLayer` attends.
public enum SelfAttentionMasking: Sendable {
    /// Every position sees every non-padding key (the encoder-decoder's encoder).
    case bidirectional
    /// The first `layout.prefixLength` rows of each sentence (`[CLS] source`) see each other; the rest
    /// (the target) are causal and also see the prefix (the decoder-only model, SPEC §1).
    case prefixLM
}

/// One pre-LN self-attention layer:
/// `x = x + Dropout(SelfAttn(LN(x)))`, `x = x + Dropout(FFN(LN(x)))`.
/// States are `[B·S, d]`, sentence-major; the layout's mask is the key-padding mask. With
/// `.bidirectional` masking it is an encoder layer (parameters `encoder.layers.<index>`); with
/// `.prefixLM` a layer of the decoder-only model (parameters `decoder.layers.<index>`, as the
/// encoder-decoder's decoder without cross-attention).
/// The layer given the model's task level runs it on its FFN sub-block's input (SPEC §2.1), pooled over
/// the valid positions, or over the prefix positions only under `.prefixLM`.
public final class SelfAttentionLayer {
    public let index: Int
    public let masking: SelfAttentionMasking
    public let selfAttentionNorm: LayerNorm
    public let selfAttention: MultiHeadAttention
    public let feedForwardNorm: LayerNorm
    /// The task level reading this layer's FFN input (the first MoE layer of the encoder or of the
    /// decoder-only stack), or nil.
    public let taskLevel: TaskLevel?
    public let feedForward: FeedForwardSublayer
    public let dropout: Float, attentionDropout: Float
    private var masks: (attention: Tensor?, feedForward: Tensor?)?

    public init(index: Int, masking: SelfAttentionMasking = .bidirectional, configuration c: TransformerConfiguration,
                feedForward: FeedForwardSublayer, taskLevel: TaskLevel? = nil, rng: inout RandomGenerator) {
        self.index = index
        self.masking = masking
        self.taskLevel = taskLevel
        let p = masking == .bidirectional ? "encoder.layers.\(index)" : "decoder.layers.\(index)"
        selfAttentionNorm = LayerNorm(name: "\(p).self_attn_norm", dim: c.modelDim)
        selfAttention = MultiHeadAttention(name: "\(p).self_attn", dim: c.modelDim, heads: c.heads, rng: &rng)
        feedForwardNorm = LayerNorm(name: "\(p).ffn_norm", dim: c.modelDim)
        self.feedForward = feedForward
        dropout = c.dropout; attentionDropout = c.attentionDropout
    }

    public var parameters: [Parameter] {
        selfAttentionNorm.parameters + selfAttention.parameters + feedForwardNorm.parameters
            + (taskLevel?.parameters ?? []) + feedForward.parameters
    }

    /// `layout.mask` with every target row zeroed: the rows the task predictor pools over under `.prefixLM`.
    static func prefixOnly(_ layout: TokenLayout) -> TokenLayout {
        var l = layout
        let len = layout.length, p = layout.prefixLength
        for s in 0..<layout.batchSize { for i in p..<len { l.mask[s * len + i] = 0 } }
        return l
    }

    /// `x` [B·S, d] → [B·S, d]; with a task level, also the `r` [B, d] it computed (which this
    /// layer's FFN sub-block already received and every later sub-block needs). `keysAndValues`
    /// (the prefix pass of the decoder-only model's incremental decoding) receives this layer's
    /// self-attention keys and values of all `S` rows.
    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool, rng: inout RandomGenerator,
                        keysAndValues cache: PrefixLMLayerCache? = nil) throws -> LayerOutput {
        let prefixLM = masking == .prefixLM
        let shape = AttentionKernel.Shape(batch: layout.batchSize, queryLength: layout.length,
                                          keyLength: layout.length, dim: selfAttention.dim,
                                          heads: selfAttention.heads, causal: prefixLM,
                                          prefixLength: prefixLM ? layout.prefixLength : 0)
        let h = selfAttentionNorm.forward(x, training: training)
        if let cache {
            let (k, v) = selfAttention.keysAndValues(h)
            cache.write(keys: k, values: v, batch: layout.batchSize, length: layout.length)
        }
        let a = selfAttention.forward(query: h, keyValue: nil, shape: shape, keyMask: layout.mask,
                                      dropout: attentionDropout, training: training, rng: &rng)
        let m1 = Dropout.mask(count: a.count, rate: dropout, training: training, rng: &rng)
        let mid = residualAdd(x, a, mask: m1)
        let h2 = feedForwardNorm.forward(mid, training: training)
        var ffnLayout = layout
        let r = try taskLevel?.forward(h2, layout: prefixLM ? Self.prefixOnly(layout) : layout, training: training)
        if let r { ffnLayout.taskRepresentation = r }
        let f = try feedForward.forward(h2, layout: ffnLayout, training: training)
        let m2 = Dropout.mask(count: f.count, rate: dropout, training: training, rng: &rng)
        masks = training ? (m1, m2) : nil
        return LayerOutput(states: residualAdd(mid, f, mask: m2), taskRepresentation: r)
    }

    /// `∂L/∂out` → `∂L/∂x`, accumulating parameter gradients. `taskGradient` is `∂L/∂r` summed
    /// over the sub-blocks after this one (decoder, later encoder layers). A layer without the task
    /// level returns its FFN sub-block's `∂L/∂r`; the one with it adds its own to `taskGradient`,
    /// runs the task level's backward with the total and returns none.
    public func backward(_ gradOutput: Tensor, taskGradient: Tensor?) throws -> LayerOutput {
        guard let m = masks else { throw TransformerError.noTrainingForward }
        masks = nil
        let dMid = Tensor(copying: gradOutput)
        let f = try feedForward.backward(maskedCopy(gradOutput, mask: m.feedForward))
        let dH2 = f.input
        var dr = f.taskRepresentation
        if let taskLevel {
            guard let total = taskGradient else {
                throw TransformerError.invalidArgument("layer \(index): the task level's backward needs ∂L/∂r")
            }
            if let own = dr { Kernels.add(own.pointer, into: total.pointer, count: total.count) }
            try taskLevel.backward(representationGradient: total, into: dH2)
            dr = nil
        }
        feedForwardNorm.backward(dH2, into: dMid)
        let dH = selfAttention.backward(maskedCopy(dMid, mask: m.attention)).query
        let dX = Tensor(copying: dMid)
        selfAttentionNorm.backward(dH, into: dX)
        return LayerOutput(states: dX, taskRepresentation: dr)
    }
}
