import XCTest
import ThorTensor
import ThorExperts
import ThorModel

/// Finds the kinks of a ReLU model explicitly: records the input of every FFN sub-block and every
/// batch sent to the routed experts during a training forward, and recomputes from them (with the
/// same kernel) the sign of every ReLU pre-activation `W1 · x + b1`. A finite-difference nudge that
/// changes this sign pattern crosses a kink of the loss, where the central difference does not
/// estimate the derivative; the whole-model check skips exactly those entries.
final class ReLUProbe {
    /// An FFN sub-block (dense FFN or MoE layer) that keeps a copy of its last training input.
    final class Sublayer: FeedForwardSublayer {
        let inner: FeedForwardSublayer
        var lastInput: Tensor?
        init(_ inner: FeedForwardSublayer) { self.inner = inner }
        var parameters: [Parameter] { inner.parameters }
        func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
            if training { lastInput = Tensor(copying: x) }
            return try inner.forward(x, layout: layout, training: training)
        }
        func backward(_ gradOutput: Tensor) throws -> SublayerGradients { try inner.backward(gradOutput) }
        func makeIncrementalState(batchSize: Int) -> IncrementalState? { inner.makeIncrementalState(batchSize: batchSize) }
        /// The dense FFNs applied to this sub-block's input: itself, or an MoE layer's shared experts.
        var feedForwards: [DenseFeedForward] {
            if let d = inner as? DenseFeedForward { return [d] }
            if let m = inner as? MoELayer { return m.sharedExperts }
            return []
        }
    }

    /// The in-process backend, keeping a copy of every training batch it is sent.
    final class Backend: ExpertBackend {
        let inner: InProcessExpertBackend
        var batches: [(layer: Int, batch: ExpertBatch)] = []
        init(_ inner: InProcessExpertBackend) { self.inner = inner }
        var spec: ExpertSpec { inner.spec }
        var shard: Shard { get { inner.shard } set { inner.shard = newValue } }
        func forward(layer: Int, batches b: [ExpertBatch], training: Bool) throws -> [Tensor] {
            if training { batches += b.map { (layer, ExpertBatch(expert: $0.expert, tokens: Tensor(copying: $0.tokens))) } }
            return try inner.forward(layer: layer, batches: b, training: training)
        }
        func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] { try inner.backward(layer: layer, gradients: gradients) }
        func squaredGradientNorms() throws -> [ExpertKey: Double] { try inner.squaredGradientNorms() }
        func step(learningRate: Float, clipScale: Float, step: Int) throws {
            try inner.step(learningRate: learningRate, clipScale: clipScale, step: step)
        }
        func zeroGradients() throws { try inner.zeroGradients() }
        func exportState() throws -> [ExpertKey: [String: Tensor]] { try inner.exportState() }
        func importState(_ state: [ExpertKey: [String: Tensor]]) throws { try inner.importState(state) }
    }

    let backend: Backend
    private(set) var sublayers: [(name: String, layer: Sublayer)] = []

    init(_ inner: InProcessExpertBackend) { backend = Backend(inner) }

    /// Wraps an FFN sub-block so that its input is recorded.
    func wrap(_ f: FeedForwardSublayer, name: String) -> FeedForwardSublayer {
        let s = Sublayer(f)
        sublayers.append((name, s))
        return s
    }

    /// Call before each training forward.
    func reset() {
        backend.batches = []
        for s in sublayers { s.layer.lastInput = nil }
    }

    /// One pre-activation: where it is and its value.
    struct PreActivation { let site: String; let value: Float }

    /// Every ReLU pre-activation of the last training forward, in a fixed order.
    func preActivations() -> [PreActivation] {
        var out: [PreActivation] = []
        for (name, s) in sublayers {
            guard let x = s.lastInput else { continue }
            let shared = s.inner is MoELayer
            for (k, f) in s.feedForwards.enumerated() where f.activation == .relu {
                let n = x.rows, d = f.modelDim, h = Tensor(shape: [n, f.hiddenDim])
                let a = Tensor(shape: [n, f.hiddenDim]), y = Tensor(shape: [n, d])
                FeedForward.forward(y: y.pointer, h: h.pointer, a: a.pointer, x: x.pointer,
                                    w1: f.w1.value.pointer, b1: f.b1.value.pointer, w2: f.w2.value.pointer, b2: f.b2.value.pointer,
                                    n: n, d: d, dFF: f.hiddenDim, activation: .relu)
                for i in 0..<h.count { out.append(PreActivation(site: "\(shared ? "\(name) shared expert \(k)" : name) [row \(i / f.hiddenDim), unit \(i % f.hiddenDim)]", value: h[i])) }
            }
        }
        for (i, (layer, batch)) in backend.batches.enumerated() where backend.spec.activation == .relu {
            let key = ExpertKey(layer: layer, expert: batch.expert)
            guard let e = backend.inner.host.experts[key], let kept = e.forward(batch.tokens, keep: true).1 else { continue }
            let h = kept.preActivation, f = e.spec.hiddenDim
            for j in 0..<h.count { out.append(PreActivation(site: "routed expert \(key) (batch \(i)) [row \(j / f), unit \(j % f)]", value: h[j])) }
        }
        return out
    }

    /// The sign pattern (`> 0`) of every ReLU pre-activation of the last training forward.
    func signs() -> [Bool] { preActivations().map { $0.value > 0 } }
}
