import ThorTensor
import ThorExperts

/// The routed experts' outputs of one forward, grouped by expert, and the combined output.
struct CombinedExperts {
    /// Token rows grouped by expert.
    let dispatch: ExpertDispatch
    /// Per dispatched expert, its outputs [tokens, d] in dispatch order.
    let outputs: [Tensor]
    /// `y = Σ_{e∈S_t} w_e · E_e(h_t)` + shared experts [rows, d].
    let output: Tensor
}

/// Dispatch to the expert backend and combine (SPEC §2.8).
extension MoELayer {
    /// Gathers each selected expert's tokens, runs the backend, sums `w · E(h)` in ascending expert id,
    /// then adds the shared experts.
    func dispatchAndCombine(_ x: Tensor, decision: RoutingDecision, layout: TokenLayout,
                            training: Bool) throws -> CombinedExperts {
        let d = modelDim
        var t = MonotonicClock.seconds()
        let dispatch = ExpertDispatch(decision, experts: routing.experts)
        let batches = dispatch.experts.indices.map { ExpertBatch(expert: dispatch.experts[$0], tokens: dispatch.gather($0, from: x.pointer, dim: d)) }
        t = phaseTimer?.add(.gather, since: t) ?? t
        let outputs = batches.isEmpty ? [] : try backend.forward(layer: ordinal, batches: batches, training: training)
        t = phaseTimer?.add(.experts, since: t) ?? t
        defer { phaseTimer?.add(.combine, since: t) }
        guard outputs.count == batches.count else {
            throw MoEError.wrongShape("\(name): backend returned \(outputs.count) outputs for \(batches.count) batches")
        }
        let y = Tensor(shape: [layout.rows, d])
        for (i, out) in outputs.enumerated() {
            guard out.rows == batches[i].tokens.rows, out.columns == d else {
                throw MoEError.wrongShape("\(name): expert \(dispatch.experts[i]) returned \(out.shape) for \(batches[i].tokens.shape)")
            }
            DispatchKernels.combine(dispatch.start[i]..<dispatch.start[i + 1], rows: dispatch.rows, slots: dispatch.slots,
                                    weights: decision.weights.pointer, outputs: out.pointer, dim: d, into: y.pointer)
        }
        for s in sharedExperts {
            let ys = try s.forward(x, layout: layout, training: training)
            Kernels.add(ys.pointer, into: y.pointer, count: y.count)
        }
        return CombinedExperts(dispatch: dispatch, outputs: outputs, output: y)
    }

    /// Sends `w · ∂L/∂y` to the experts and scatters their `∂L/∂h` (then the shared experts')
    /// into `dx` [rows, d]; returns it with `dw` = `∂L/∂w` = `∂L/∂y · E(h)` per selection slot.
    func backwardThroughExperts(_ gradOutput: Tensor, cache k: Cache) throws -> (dx: Tensor, dw: Tensor) {
        let d = modelDim, dec = k.decision, disp = k.combine.dispatch, dy = gradOutput.pointer
        var t = MonotonicClock.seconds()
        let dx = Tensor(shape: [k.x.rows, d])
        let dw = Tensor(shape: [dec.rows * dec.slots])
        var grads: [ExpertBatch] = []
        for (i, out) in k.combine.outputs.enumerated() {
            let gi = Tensor(uninitializedShape: out.shape)  // every row is written below
            DispatchKernels.weightedGradients(disp.start[i]..<disp.start[i + 1], rows: disp.rows, slots: disp.slots,
                                              weights: dec.weights.pointer, dy: dy, outputs: out.pointer, dim: d,
                                              into: gi.pointer, dw: dw.pointer)
            grads.append(ExpertBatch(expert: disp.experts[i], tokens: gi))
        }
        t = phaseTimer?.add(.gatherBackward, since: t) ?? t
        let dxs = grads.isEmpty ? [] : try backend.backward(layer: ordinal, gradients: grads)
        t = phaseTimer?.add(.expertsBackward, since: t) ?? t
        defer { phaseTimer?.add(.combineBackward, since: t) }
        for (i, g) in dxs.enumerated() {
            DispatchKernels.scatterAdd(disp.start[i]..<disp.start[i + 1], rows: disp.rows, gradients: g.pointer,
                                       dim: d, into: dx.pointer)
        }
        for s in sharedExperts {
            let g = try s.backward(gradOutput).input
            Kernels.add(g.pointer, into: dx.pointer, count: dx.count)
        }
        return (dx, dw)
    }
}
