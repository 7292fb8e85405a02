import ThorTensor
import ThorExperts

/// The task level inside one MoE layer (SPEC §2.2–2.3): the layer receives `r` and routes
/// sentences with its own task router; `∂L/∂r` goes back to the model with the layer's gradients.
extension MoELayer {
    /// `r` [B, d] from the layout for task-predictor variants (nil otherwise); a missing or
    /// misshapen `r` is an error.
    func taskRepresentation(_ layout: TokenLayout) throws -> Tensor? {
        guard routing.variant.usesTaskPredictor else { return nil }
        let b = layout.batchSize
        guard let r = layout.taskRepresentation else {
            throw MoEError.taskLevelNotComputed(
                "\(name) needs the task representation r for \(b) sentences in its layout; "
                + "the model's task level computes it at the first encoder MoE sub-block (encode before decoding)")
        }
        guard r.rows == b, r.columns == modelDim else {
            throw MoEError.wrongShape("\(name): task representation \(r.shape) for \(b) sentences of width \(modelDim)")
        }
        return r
    }

    /// `q = softmax(W_task r)` and the candidate sets, when the variant has a task router and the
    /// task level is active (nil during its warm-up: every expert is a candidate, no `log q`).
    func routeTasks(_ r: Tensor?) -> TaskRouting? {
        guard taskLevelActive, let taskRouter, let r else { return nil }
        return taskRouter.forward(r: r)
    }

    /// Adds the task router's `∂L/∂r` (through `log q` and `β L_task_lb`) into `dr`; accumulates `∂L/∂W_task`.
    func backwardTaskRouting(dLogQ: Tensor?, cache k: Cache, dr: Tensor?) {
        guard let taskRouter, let tr = k.taskRouting, let r = k.r, let dr else { return }
        let d2 = taskRouter.backward(tr, r: r, dLogQ: dLogQ, balanceScale: lossWeights.beta * lossScale * microBatchShare.batch)
        Kernels.add(d2.pointer, into: dr.pointer, count: d2.count)
    }
}
