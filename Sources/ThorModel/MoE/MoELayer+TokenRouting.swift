import ThorTensor
import ThorExperts

/// The token level of one MoE layer (SPEC §2.6–2.7 and the auxiliary losses of §3):
/// `p = softmax(W_r h̃ (+ log q))` over the candidates, then top-k, top-p or hard selection.
extension MoELayer {
    /// Token router probabilities `p` [rows, N] (nil for hard routing) and the selection.
    func routeTokens(_ x: Tensor, context: GatedContext?, taskRouting: TaskRouting?, layout: TokenLayout,
                     mask mp: UnsafePointer<Float>) throws -> (p: Tensor?, decision: RoutingDecision) {
        let nRows = layout.rows, nExperts = routing.experts
        guard let router else {
            guard let labels = layout.taskLabels else { throw MoEError.missingTaskLabels("hard routing follows the gold task") }
            for l in labels where l < 0 || (routing.tasks > 0 && l >= routing.tasks) {
                throw MoEError.taskLabelOutOfRange(label: l, tasks: routing.tasks)
            }
            return (nil, Selection.hard(labels: labels, length: layout.length, experts: nExperts, k: routing.resolvedK, mask: mp))
        }
        let hIn = UnsafePointer((context?.ht ?? x).pointer)
        let p = router.forward(ht: hIn, rows: nRows, dim: modelDim, length: layout.length, allowed: taskRouting?.allowed,
                               logQ: routing.resolvedTaskPrior ? taskRouting?.logQ : nil, mask: mp)
        switch routing.resolvedSelection {
        case .topk:
            return (p, Selection.topK(p.pointer, rows: nRows, experts: nExperts, k: routing.resolvedK, mask: mp))
        case .topp:
            return (p, Selection.topP(p.pointer, rows: nRows, experts: nExperts, threshold: routing.threshold,
                                      maxExperts: routing.maxExperts, mask: mp))
        }
    }

    /// `L_task_lb`, `L_tok_lb` and `L_dyn` of this forward (values only).
    func auxiliaryLosses(taskRouting: TaskRouting?, p: Tensor?, decision: RoutingDecision,
                         mask mp: UnsafePointer<Float>) -> LayerLosses {
        var l = LayerLosses()
        if let taskRouter, let taskRouting { l.taskBalance = taskRouter.balanceLoss(taskRouting).value }
        if let p {
            l.tokenBalance = TokenRouter.tokenBalance(p: p, decision: decision, mask: mp, scale: 0, dp: nil)
            if routing.resolvedSelection == .topp { l.dynamic = TokenRouter.entropy(p: p, mask: mp, scale: 0, dp: nil) }
        }
        return l
    }

    /// `∂L/∂z` [rows, N] of the token router's logits, from the combine weights' `dw` and the
    /// weighted `L_tok_lb` and `L_dyn`; and `∂L/∂log q` [B, N] when `log q` is added to the logits.
    func backwardTokenRouting(p: Tensor, dw: Tensor, cache k: Cache,
                              mask mp: UnsafePointer<Float>) -> (dz: Tensor, dLogQ: Tensor?) {
        let nRows = k.x.rows, nExperts = routing.experts, dec = k.decision
        // ∂L/∂p from the combine weights and the auxiliary losses
        let dp = Tensor(shape: p.shape)
        for t in 0..<nRows where dec.count[t] > 0 {
            let c = Int(dec.count[t]), base = t * dec.slots, pt = p.pointer + t * nExperts, dpt = dp.pointer + t * nExperts
            if dec.renormalized {
                var sum: Float = 0, wdot: Float = 0
                for s in 0..<c { sum += pt[Int(dec.experts[base + s])]; wdot += dw[base + s] * dec.weights[base + s] }
                for s in 0..<c { dpt[Int(dec.experts[base + s])] += (dw[base + s] - wdot) / sum }
            } else {
                for s in 0..<c { dpt[Int(dec.experts[base + s])] += dw[base + s] }
            }
        }
        _ = TokenRouter.tokenBalance(p: p, decision: dec, mask: mp, scale: lossWeights.gamma * lossScale * microBatchShare.batch, dp: dp)
        if routing.resolvedSelection == .topp {
            _ = TokenRouter.entropy(p: p, mask: mp, scale: lossWeights.delta * lossScale * microBatchShare.tokens, dp: dp)
        }
        let dz = Tensor(shape: p.shape)
        for t in 0..<nRows where mp[t] != 0 {
            RoutingKernels.softmaxBackward(p: p.pointer + t * nExperts, dp: dp.pointer + t * nExperts,
                                           dz: dz.pointer + t * nExperts, count: nExperts)
        }
        guard routing.resolvedTaskPrior, k.taskRouting != nil else { return (dz, nil) }
        let dLogQ = Tensor(shape: [k.batch, nExperts])
        for t in 0..<nRows { Kernels.add(dz.pointer + t * nExperts, into: dLogQ.pointer + (t / k.length) * nExperts, count: nExperts) }
        return (dz, dLogQ)
    }
}
