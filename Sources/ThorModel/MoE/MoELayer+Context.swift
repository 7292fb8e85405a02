import ThorTensor
import ThorExperts

/// The context `c` and the gated routing input `h̃` of one forward (SPEC §2.4–2.5).
struct GatedContext {
    /// `c`: [B, d] per sentence (encoder) or [rows, d] per token (decoder, incremental step).
    let c: Tensor
    /// `1 / count` per context row.
    let inverse: Tensor
    /// Rows of `h` that share one context row (`L` for the encoder, 1 otherwise).
    let rowsPerContext: Int
    /// `g` [rows, d].
    let g: Tensor
    /// `h̃` [rows, d]: what the token router reads (rescaled with `context_norm = match-state`).
    let ht: Tensor
    /// With `context_norm = match-state`: the gate's output before the rescale [rows, d] and the
    /// norms `‖h‖`, `‖h̃‖` [rows] (`ContextNorm`); nil otherwise.
    var rescale: (unscaled: Tensor, stateNorm: Tensor, mixNorm: Tensor)? = nil
}

/// Context and gate of one MoE layer.
extension MoELayer {
    /// `c` (sentence mean, causal prefix mean, or one incremental step of it) and `h̃ = g ⊙ h + (1 − g) ⊙ c`
    /// (+ `r` for infuse); nil when the variant has no context gate.
    func gateContext(_ x: Tensor, layout: TokenLayout, mask mp: UnsafePointer<Float>, r: Tensor?) throws -> GatedContext? {
        guard let gate else { return nil }
        let d = modelDim, nRows = layout.rows, b = layout.batchSize, len = layout.length
        let c: Tensor, inverse: Tensor
        var rowsPerContext = 1
        if layout.prefixLength > 0 {
            // Prefix-LM pass: prefix mean for the prefix, causal mean over the sequence for the target;
            // a prefix pass of incremental decoding leaves the prefix sums in the layer's state.
            c = Tensor(shape: [nRows, d]); inverse = Tensor(shape: [nRows])
            let st = try layout.state.map { try decodingState($0, batch: b) }
            let sums = st.map { _ in Tensor(shape: [b, d]) }, counts = st.map { _ in Tensor(shape: [b]) }
            Context.prefixLMForward(h: x.pointer, mask: mp, batch: b, length: len, prefixLength: layout.prefixLength, dim: d,
                                    c: c.pointer, inverse: inverse.pointer, prefixSums: sums?.pointer, prefixCounts: counts?.pointer)
            if let st, let sums, let counts { st.startFromPrefix(sums: sums, counts: counts) }
        } else if let state = layout.state {
            let st = try decodingState(state, batch: b)
            c = Tensor(shape: [b, d]); inverse = Tensor(shape: [b])
            st.step(h: x, mask: mp, c: c, inverse: inverse)
        } else if side == .encoder {
            c = Tensor(shape: [b, d]); inverse = Tensor(shape: [b]); rowsPerContext = len
            Context.encoderForward(h: x.pointer, mask: mp, batch: b, length: len, dim: d, c: c.pointer, inverse: inverse.pointer)
        } else {
            c = Tensor(shape: [nRows, d]); inverse = Tensor(shape: [nRows])
            Context.decoderForward(h: x.pointer, mask: mp, batch: b, length: len, dim: d, c: c.pointer, inverse: inverse.pointer)
        }
        let g = Tensor(shape: [nRows, d]), ht = Tensor(shape: [nRows, d])
        let infused: UnsafePointer<Float>? = routing.variant == .infuse ? r.map { UnsafePointer($0.pointer) } : nil
        gate.forward(h: x.pointer, c: c.pointer, rows: nRows, rowsPerContext: rowsPerContext,
                     r: infused, rowsPerSentence: len, g: g.pointer, ht: ht.pointer)
        switch routing.contextNorm {
        case .none:
            return GatedContext(c: c, inverse: inverse, rowsPerContext: rowsPerContext, g: g, ht: ht)
        case .matchState:
            let scaled = Tensor(shape: [nRows, d]), a = Tensor(shape: [nRows]), bn = Tensor(shape: [nRows])
            ContextNorm.matchStateForward(h: x.pointer, u: ht.pointer, rows: nRows, dim: d, y: scaled.pointer,
                                          stateNorm: a.pointer, mixNorm: bn.pointer)
            return GatedContext(c: c, inverse: inverse, rowsPerContext: rowsPerContext, g: g, ht: scaled,
                                rescale: (ht, a, bn))
        }
    }

    /// The layer's typed decoding state for `b` rows, or a clear error.
    private func decodingState(_ state: IncrementalState, batch b: Int) throws -> MoEDecodingState {
        guard let st = state as? MoEDecodingState else {
            throw MoEError.wrongShape("\(name): incremental state \(type(of: state)) is not an MoEDecodingState (use makeIncrementalState)")
        }
        guard st.batchSize == b, st.modelDim == modelDim else {
            throw MoEError.wrongShape("\(name): decoding state for \(st.batchSize) rows of width \(st.modelDim), step has \(b) of width \(modelDim)")
        }
        return st
    }

    /// `∂L/∂h̃` → adds `∂L/∂h` (directly and through `c`) into `dx` and, for infuse, `∂L/∂r` into `dr`;
    /// without a gate `h̃ = h` and `dht` is added into `dx`.
    func backwardGate(_ dht: Tensor, cache k: Cache, mask mp: UnsafePointer<Float>, dx: Tensor, dr: Tensor?) {
        let d = modelDim, nRows = k.x.rows
        guard let gate, let ctx = k.context else {
            Kernels.add(dht.pointer, into: dx.pointer, count: dx.count)
            return
        }
        // match-state: ∂L/∂h̃' → ∂L/∂h̃ (the gate's output), plus the path through ‖h‖ into dx
        var dGate = dht
        if let rs = ctx.rescale {
            dGate = Tensor(uninitializedShape: [nRows, d])  // every row is written
            ContextNorm.matchStateBackward(dy: dht.pointer, h: k.x.pointer, u: rs.unscaled.pointer, stateNorm: rs.stateNorm.pointer,
                                           mixNorm: rs.mixNorm.pointer, rows: nRows, dim: d, du: dGate.pointer, dh: dx.pointer)
        }
        let dc = Tensor(shape: ctx.c.shape)
        gate.backward(dht: dGate.pointer, h: k.x.pointer, c: ctx.c.pointer, g: ctx.g.pointer, rows: nRows,
                      rowsPerContext: ctx.rowsPerContext, rowsPerSentence: k.length,
                      dh: dx.pointer, dc: dc.pointer, dr: routing.variant == .infuse ? dr?.pointer : nil)
        if k.prefixLength > 0 {
            Context.prefixLMBackward(dc: dc.pointer, mask: mp, inverse: ctx.inverse.pointer, batch: k.batch, length: k.length,
                                     prefixLength: k.prefixLength, dim: d, dh: dx.pointer)
        } else if side == .encoder {
            Context.encoderBackward(dc: dc.pointer, mask: mp, inverse: ctx.inverse.pointer, batch: k.batch, length: k.length, dim: d, dh: dx.pointer)
        } else {
            Context.decoderBackward(dc: dc.pointer, mask: mp, inverse: ctx.inverse.pointer, batch: k.batch, length: k.length, dim: d, dh: dx.pointer)
        }
    }
}
