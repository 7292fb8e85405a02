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
    let out = Tensor(shape: grad.shape)
    if let mask {
        Dropout.backward(dinp: out.pointer, dout: grad.pointer, mask: mask.pointer, count: grad.count)
    } else {
        out.copy(from: grad)
    }
    return out
}

/// One pre-LN encoder layer:
/// `x = x + Dropout(SelfAttn(LN(x)))`, `x = x + Dropout(FFN(LN(x)))`.
/// States are `[B·S, d]`, sentence-major; the layout's mask is the key-padding mask.
public final class EncoderLayer {
    public let index: Int
    public let selfAttentionNorm: LayerNorm
    public let selfAttention: MultiHeadAttention
    public let feedForwardNorm: LayerNorm
    public let feedForward: FeedForwardSublayer
    public let dropout: Float, attentionDropout: Float
    private var masks: (attention: Tensor?, feedForward: Tensor?)?

    /// Parameter prefix `encoder.layers.<index>`.
    public init(index: Int, configuration c: TransformerConfiguration, feedForward: FeedForwardSublayer,
                rng: inout RandomGenerator) {
        self.index = index
        let p = "encoder.layers.\(index)"
        selfAttentionNorm = LayerNorm(name: "\(p).self_attn_norm", dim: c.modelDim)
        selfAttention = MultiHeadAttention(name: "\(p).self_attn", dim: c.modelDim, heads: c.heads, rng: &rng)
        feedForwardNorm = LayerNorm(name: "\(p).ffn_norm", dim: c.modelDim)
        self.feedForward = feedForward
        dropout = c.dropout; attentionDropout = c.attentionDropout
    }

    public var parameters: [Parameter] {
        selfAttentionNorm.parameters + selfAttention.parameters + feedForwardNorm.parameters + feedForward.parameters
    }

    /// `x` [B·S, d] → [B·S, d].
    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool, rng: inout RandomGenerator) throws -> Tensor {
        let shape = AttentionKernel.Shape(batch: layout.batchSize, queryLength: layout.length,
                                          keyLength: layout.length, dim: selfAttention.dim,
                                          heads: selfAttention.heads, causal: false)
        let h = selfAttentionNorm.forward(x, training: training)
        let a = selfAttention.forward(query: h, keyValue: nil, shape: shape, keyMask: layout.mask,
                                      dropout: attentionDropout, training: training, rng: &rng)
        let m1 = Dropout.mask(count: a.count, rate: dropout, training: training, rng: &rng)
        let mid = residualAdd(x, a, mask: m1)
        let h2 = feedForwardNorm.forward(mid, training: training)
        let f = try feedForward.forward(h2, layout: layout, training: training)
        let m2 = Dropout.mask(count: f.count, rate: dropout, training: training, rng: &rng)
        masks = training ? (m1, m2) : nil
        return residualAdd(mid, f, mask: m2)
    }

    /// `∂L/∂out` → `∂L/∂x`, accumulating parameter gradients.
    public func backward(_ gradOutput: Tensor) throws -> Tensor {
        guard let m = masks else { throw TransformerError.noTrainingForward }
        masks = nil
        let dMid = Tensor(copying: gradOutput)
        let dH2 = try feedForward.backward(maskedCopy(gradOutput, mask: m.feedForward))
        feedForwardNorm.backward(dH2, into: dMid)
        let dH = selfAttention.backward(maskedCopy(dMid, mask: m.attention)).query
        let dX = Tensor(copying: dMid)
        selfAttentionNorm.backward(dH, into: dX)
        return dX
    }
}
