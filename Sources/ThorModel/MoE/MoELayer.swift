import ThorTensor
import ThorExperts

/// Auxiliary loss values of one MoE layer's last training forward (unweighted; nil when the
/// variant has no such loss).
public struct LayerLosses: Sendable, Equatable {
    public var taskBalance: Double?
    public var tokenBalance: Double?
    public var dynamic: Double?
    public init(taskBalance: Double? = nil, tokenBalance: Double? = nil, dynamic: Double? = nil) {
        self.taskBalance = taskBalance; self.tokenBalance = tokenBalance; self.dynamic = dynamic
    }
}

/// A THOR-MoE FFN sub-block (SPEC §2): both routing levels, expert selection, dispatch to
/// an `ExpertBackend`, combine in ascending expert id, shared experts, and the gradients of
/// its weighted auxiliary losses. Every variant of `RoutingVariant` except `dense` runs here.
public final class MoELayer: FeedForwardSublayer {
    public let name: String
    /// MoE-layer ordinal (`ExpertKey.layer`): encoder MoE layers first, then decoder ones.
    public let ordinal: Int
    public let side: Side
    public let modelDim: Int
    public let routing: RoutingConfiguration
    public let lossWeights: LossConfiguration
    /// `1 / (number of MoE layers)`: per-layer losses are averaged over the MoE layers.
    public let lossScale: Float
    public let backend: ExpertBackend
    /// The model's task level (task-predictor variants), shared by every MoE layer.
    public let taskLevel: TaskLevel?
    /// This layer runs the task level's forward and backward (the first encoder MoE layer).
    public let ownsTaskLevel: Bool
    public let taskRouter: TaskRouter?
    public let gate: ContextGate?
    public let router: TokenRouter?
    public let sharedExperts: [DenseFeedForward]
    /// Where routing statistics go while collection is on.
    public let collector: RoutingStatisticsCollector?

    /// Loss values of the last training forward.
    public private(set) var lastLosses = LayerLosses()
    /// Selection of the last forward (any mode).
    public private(set) var lastDecision: RoutingDecision?
    /// Token router probabilities `p` [rows, N] of the last forward.
    public private(set) var lastProbabilities: Tensor?
    /// Task routing (q, C) of the last forward.
    public private(set) var lastTaskRouting: TaskRouting?

    private struct Cache {
        let x: Tensor, mask: Tensor, batch: Int, length: Int
        let r: Tensor?, taskRouting: TaskRouting?
        let c: Tensor?, contextInverse: Tensor?, rowsPerContext: Int, g: Tensor?, ht: Tensor?
        let p: Tensor?, decision: RoutingDecision, dispatch: ExpertDispatch, outputs: [Tensor]
    }
    private var cache: Cache?

    /// `routing` must be validated; `taskLevel` is required by task-predictor variants and must be nil
    /// otherwise. Parameters are named `name.task_router.w`, `name.gate.{w,b}`, `name.router.w`,
    /// `name.shared.i.*`; their initial values derive from `rng`.
    public init(name: String, ordinal: Int, side: Side, modelDim d: Int, hiddenDim: Int, activation: Activation,
                routing: RoutingConfiguration, losses: LossConfiguration, moeLayerCount: Int,
                backend: ExpertBackend, taskLevel: TaskLevel?, ownsTaskLevel: Bool,
                collector: RoutingStatisticsCollector? = nil, rng: inout RandomGenerator) {
        let v = routing.variant
        precondition(v != .dense, "the dense variant has no MoE layers")
        precondition(v.usesTaskPredictor == (taskLevel != nil), "variant \(v.rawValue): task level \(taskLevel == nil ? "missing" : "not used")")
        precondition(!ownsTaskLevel || (taskLevel != nil && side == .encoder))
        self.name = name; self.ordinal = ordinal; self.side = side; modelDim = d
        self.routing = routing; lossWeights = losses; lossScale = 1 / Float(max(1, moeLayerCount))
        self.backend = backend; self.taskLevel = taskLevel; self.ownsTaskLevel = ownsTaskLevel
        self.collector = collector
        let n = routing.experts
        taskRouter = v.usesTaskMask
            ? TaskRouter(name: "\(name).task_router", dim: d, experts: n, candidates: routing.resolvedCandidates, rng: &rng) : nil
        gate = v.usesContextGate ? ContextGate(name: "\(name).gate", dim: d, rng: &rng) : nil
        router = v.usesTokenRouter ? TokenRouter(name: "\(name).router", dim: d, experts: n, rng: &rng) : nil
        sharedExperts = (0..<routing.sharedExperts).map {
            DenseFeedForward(name: "\(name).shared.\($0)", modelDim: d, hiddenDim: hiddenDim, activation: activation, rng: &rng)
        }
    }

    /// Coordinator-side parameters: the task level's (owner only), task router, gate, router, shared experts.
    public var parameters: [Parameter] {
        var p: [Parameter] = []
        if ownsTaskLevel, let t = taskLevel { p += t.parameters }
        if let taskRouter { p += taskRouter.parameters }
        if let gate { p += gate.parameters }
        if let router { p += router.parameters }
        for s in sharedExperts { p += s.parameters }
        return p
    }

    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        let d = modelDim, nRows = layout.rows, b = layout.batchSize, len = layout.length
        let nExperts = routing.experts, v = routing.variant
        guard x.rows == nRows, x.columns == d else {
            throw MoEError.wrongShape("\(name): input \(x.shape), layout has \(nRows) rows of width \(d)")
        }
        let incremental = layout.isIncremental
        if incremental && (training || side == .encoder || len != 1) {
            throw MoEError.wrongShape("\(name): incremental steps are decoder-only, one position per sentence, not training")
        }
        let mask = Tensor(shape: [nRows], values: layout.mask)
        let mp = UnsafePointer(mask.pointer)

        // Task level: r [B, d]
        var r: Tensor?
        if let tl = taskLevel {
            if ownsTaskLevel {
                try tl.forward(x, layout: layout, training: training)
                collector?.statistics?.recordPredictions(tl.predictions, gold: layout.taskLabels)
            }
            if incremental, let kept = layout.state!.tensors["moe.task_representation"] {
                r = kept
            } else {
                guard let rep = tl.representation, rep.rows == b else {
                    throw MoEError.taskLevelNotComputed("\(name) needs r for \(b) sentences; run the encoder (first encoder MoE layer) first")
                }
                r = rep
                if incremental { layout.state!.tensors["moe.task_representation"] = Tensor(copying: rep) }
            }
        }
        let taskRouting = taskRouter.map { $0.forward(r: r!) }

        // Context and gate: h̃ [n, d]
        var c: Tensor?, cInv: Tensor?, g: Tensor?, ht: Tensor?
        var rowsPerContext = 1
        if let gate {
            if incremental {
                let st = layout.state!
                let sum = st.tensors["moe.prefix_sum"] ?? Tensor(shape: [b, d])
                let count = st.tensors["moe.prefix_count"] ?? Tensor(shape: [b])
                let cc = Tensor(shape: [b, d]), inv = Tensor(shape: [b])
                for s in 0..<b {
                    inv[s] = Context.step(h: x.pointer + s * d, isToken: mp[s] != 0, sum: sum.pointer + s * d,
                                          count: &count.pointer[s], dim: d, c: cc.pointer + s * d)
                }
                st.tensors["moe.prefix_sum"] = sum; st.tensors["moe.prefix_count"] = count
                c = cc; cInv = inv
            } else if side == .encoder {
                c = Tensor(shape: [b, d]); cInv = Tensor(shape: [b]); rowsPerContext = len
                Context.encoderForward(h: x.pointer, mask: mp, batch: b, length: len, dim: d, c: c!.pointer, inverse: cInv!.pointer)
            } else {
                c = Tensor(shape: [nRows, d]); cInv = Tensor(shape: [nRows])
                Context.decoderForward(h: x.pointer, mask: mp, batch: b, length: len, dim: d, c: c!.pointer, inverse: cInv!.pointer)
            }
            g = Tensor(shape: [nRows, d]); ht = Tensor(shape: [nRows, d])
            gate.forward(h: x.pointer, c: c!.pointer, rows: nRows, rowsPerContext: rowsPerContext,
                         r: v == .infuse ? UnsafePointer(r!.pointer) : nil, rowsPerSentence: len,
                         g: g!.pointer, ht: ht!.pointer)
        }

        // Token router and selection
        var p: Tensor?
        let decision: RoutingDecision
        if let router {
            let hIn = UnsafePointer((ht ?? x).pointer)
            p = router.forward(ht: hIn, rows: nRows, dim: d, length: len, allowed: taskRouting?.allowed,
                               logQ: routing.taskPrior ? taskRouting?.logQ : nil, mask: mp)
            switch routing.resolvedSelection {
            case .topk:
                decision = Selection.topK(p!.pointer, rows: nRows, experts: nExperts, k: routing.resolvedK, mask: mp)
            case .topp:
                decision = Selection.topP(p!.pointer, rows: nRows, experts: nExperts, threshold: routing.threshold,
                                          maxExperts: routing.maxExperts, mask: mp)
            }
        } else {
            guard let labels = layout.taskLabels else { throw MoEError.missingTaskLabels("hard routing follows the gold task") }
            for l in labels where l < 0 || (routing.tasks > 0 && l >= routing.tasks) {
                throw MoEError.taskLabelOutOfRange(label: l, tasks: routing.tasks)
            }
            decision = Selection.hard(labels: labels, length: len, experts: nExperts, k: routing.resolvedK, mask: mp)
        }
        if training, let cf = routing.capacityFactor { Selection.applyCapacity(decision, factor: cf, experts: nExperts) }

        // Loss values (gradients are applied in backward)
        if training {
            var l = LayerLosses()
            if let taskRouter, let taskRouting { l.taskBalance = taskRouter.balanceLoss(taskRouting).value }
            if let p {
                l.tokenBalance = TokenRouter.tokenBalance(p: p, decision: decision, mask: mp, scale: 0, dp: nil)
                if routing.resolvedSelection == .topp { l.dynamic = TokenRouter.entropy(p: p, mask: mp, scale: 0, dp: nil) }
            }
            lastLosses = l
        }

        // Dispatch, experts, combine in ascending expert id
        let dispatch = ExpertDispatch(decision, experts: nExperts)
        let batches = dispatch.experts.indices.map { ExpertBatch(expert: dispatch.experts[$0], tokens: dispatch.gather($0, from: x.pointer, dim: d)) }
        let outputs = batches.isEmpty ? [] : try backend.forward(layer: ordinal, batches: batches, training: training)
        guard outputs.count == batches.count else {
            throw MoEError.wrongShape("\(name): backend returned \(outputs.count) outputs for \(batches.count) batches")
        }
        let y = Tensor(shape: [nRows, d])
        for (i, out) in outputs.enumerated() {
            guard out.rows == batches[i].tokens.rows, out.columns == d else {
                throw MoEError.wrongShape("\(name): expert \(dispatch.experts[i]) returned \(out.shape) for \(batches[i].tokens.shape)")
            }
            for (j, a) in (dispatch.start[i]..<dispatch.start[i + 1]).enumerated() {
                Kernels.axpy(decision.weights[Int(dispatch.slots[a])], out.pointer + j * d,
                             into: y.pointer + Int(dispatch.rows[a]) * d, count: d)
            }
        }
        for s in sharedExperts {
            let ys = try s.forward(x, layout: layout, training: training)
            Kernels.add(ys.pointer, into: y.pointer, count: y.count)
        }

        collector?.statistics?.record(layer: ordinal, decision: decision, mask: layout.mask, length: len, labels: layout.taskLabels)
        lastDecision = decision; lastProbabilities = p; lastTaskRouting = taskRouting
        cache = training ? Cache(x: x, mask: mask, batch: b, length: len, r: r, taskRouting: taskRouting,
                                 c: c, contextInverse: cInv, rowsPerContext: rowsPerContext, g: g, ht: ht,
                                 p: p, decision: decision, dispatch: dispatch, outputs: outputs) : nil
        return y
    }

    public func backward(_ gradOutput: Tensor) throws -> Tensor {
        guard let k = cache else { throw MoEError.noPendingForward(name) }
        let d = modelDim, nRows = k.x.rows, nExperts = routing.experts
        guard gradOutput.rows == nRows, gradOutput.columns == d else {
            throw MoEError.wrongShape("\(name): gradient \(gradOutput.shape) for output [\(nRows), \(d)]")
        }
        cache = nil
        let dy = gradOutput.pointer, mp = UnsafePointer(k.mask.pointer)
        let dec = k.decision, disp = k.dispatch
        let dx = Tensor(shape: [nRows, d])

        // Experts: send w·dy, keep dw = dy·E(h) per slot
        let dw = Tensor(shape: [dec.rows * dec.slots])
        var grads: [ExpertBatch] = []
        for (i, out) in k.outputs.enumerated() {
            let gi = Tensor(shape: out.shape)
            for (j, a) in (disp.start[i]..<disp.start[i + 1]).enumerated() {
                let t = Int(disp.rows[a]), slot = Int(disp.slots[a])
                let dyt = dy + t * d, o = out.pointer + j * d, gp = gi.pointer + j * d
                let w = dec.weights[slot]
                var dot: Float = 0
                for q in 0..<d { gp[q] = w * dyt[q]; dot += dyt[q] * o[q] }
                dw[slot] = dot
            }
            grads.append(ExpertBatch(expert: disp.experts[i], tokens: gi))
        }
        let dxs = grads.isEmpty ? [] : try backend.backward(layer: ordinal, gradients: grads)
        for (i, g) in dxs.enumerated() {
            for (j, a) in (disp.start[i]..<disp.start[i + 1]).enumerated() {
                Kernels.add(g.pointer + j * d, into: dx.pointer + Int(disp.rows[a]) * d, count: d)
            }
        }
        for s in sharedExperts {
            let g = try s.backward(gradOutput)
            Kernels.add(g.pointer, into: dx.pointer, count: dx.count)
        }

        let dr: Tensor? = k.r.map { Tensor(shape: $0.shape) }
        if let router, let p = k.p {
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
            _ = TokenRouter.tokenBalance(p: p, decision: dec, mask: mp, scale: lossWeights.gamma * lossScale, dp: dp)
            if routing.resolvedSelection == .topp {
                _ = TokenRouter.entropy(p: p, mask: mp, scale: lossWeights.delta * lossScale, dp: dp)
            }
            let dz = Tensor(shape: p.shape)
            for t in 0..<nRows where mp[t] != 0 {
                RoutingKernels.softmaxBackward(p: p.pointer + t * nExperts, dp: dp.pointer + t * nExperts,
                                               dz: dz.pointer + t * nExperts, count: nExperts)
            }
            var dLogQ: Tensor?
            if routing.taskPrior, k.taskRouting != nil {
                dLogQ = Tensor(shape: [k.batch, nExperts])
                for t in 0..<nRows { Kernels.add(dz.pointer + t * nExperts, into: dLogQ!.pointer + (t / k.length) * nExperts, count: nExperts) }
            }
            let dht = router.backward(dz: dz, ht: (k.ht ?? k.x).pointer, dim: d)
            if let gate, let c = k.c, let g = k.g, let inv = k.contextInverse {
                let dc = Tensor(shape: c.shape)
                gate.backward(dht: dht.pointer, h: k.x.pointer, c: c.pointer, g: g.pointer, rows: nRows,
                              rowsPerContext: k.rowsPerContext, rowsPerSentence: k.length,
                              dh: dx.pointer, dc: dc.pointer, dr: routing.variant == .infuse ? dr!.pointer : nil)
                if side == .encoder {
                    Context.encoderBackward(dc: dc.pointer, mask: mp, inverse: inv.pointer, batch: k.batch, length: k.length, dim: d, dh: dx.pointer)
                } else {
                    Context.decoderBackward(dc: dc.pointer, mask: mp, inverse: inv.pointer, batch: k.batch, length: k.length, dim: d, dh: dx.pointer)
                }
            } else {
                Kernels.add(dht.pointer, into: dx.pointer, count: dx.count)
            }
            if let taskRouter, let tr = k.taskRouting, let r = k.r {
                let d2 = taskRouter.backward(tr, r: r, dLogQ: dLogQ, balanceScale: lossWeights.beta * lossScale)
                Kernels.add(d2.pointer, into: dr!.pointer, count: d2.count)
            }
        }
        if let tl = taskLevel, let dr { tl.addRepresentationGradient(dr.pointer) }
        if ownsTaskLevel, let tl = taskLevel { try tl.backward(into: dx) }
        return dx
    }
}

extension MoELayer: EncoderDependentSublayer {
    /// The task representation `r` of the encoder pass just run (task-predictor variants), so that
    /// decoding an `EncodedSource` uses its own `r` even after other batches went through the task level.
    public func stateFromEncoder(batchSize b: Int) throws -> [String: Tensor] {
        guard let tl = taskLevel else { return [:] }
        guard let rep = tl.representation, rep.rows == b else {
            throw MoEError.taskLevelNotComputed("\(name) needs r for \(b) sentences after the encoder pass")
        }
        return ["moe.task_representation": Tensor(copying: rep)]
    }
}
