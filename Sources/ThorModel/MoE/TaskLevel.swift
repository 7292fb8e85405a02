import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

/// Errors of the MoE layers that are not the backend's.
public enum MoEError: Error, CustomStringConvertible, Equatable {
    case missingTaskLabels(String)
    case taskLabelOutOfRange(label: Int, tasks: Int)
    case taskLevelNotComputed(String)
    case noPendingForward(String)
    case wrongShape(String)

    public var description: String {
        switch self {
        case .missingTaskLabels(let why): return "task labels are needed: \(why)"
        case .taskLabelOutOfRange(let l, let t): return "task label \(l) is outside 0..<\(t)"
        case .taskLevelNotComputed(let why): return "the task level has not run for this batch: \(why)"
        case .noPendingForward(let who): return "\(who): backward without a training forward before it"
        case .wrongShape(let s): return "wrong shape: \(s)"
        }
    }
}

/// The task level of a model (SPEC §2.1–2.2): the task predictor `P_task = softmax(W_t u + b_t)`
/// over the max-pool `u` of the first encoder MoE sub-block's input, the task embeddings
/// `E_task` [T, d], and the task representation `r` (mixed, gold or argmax), plus `L_task`.
///
/// The model runs it once per pass: `forward` on the input of encoder layer `encoderLayer`'s FFN
/// sub-block returns `r`, which every MoE layer then receives in its `TokenLayout`; after the
/// backward of every MoE layer, the model sums their `∂L/∂r` and calls `backward`.
public final class TaskLevel {
    public let modelDim: Int
    public let tasks: Int
    /// Where the predictor's forward and backward are timed (as `routing`; nil: not timed).
    public var phaseTimer: PhaseTimer?
    public let kind: TaskRepresentation
    /// The encoder layer whose FFN sub-block input the predictor reads (the first encoder MoE layer).
    public let encoderLayer: Int
    /// α, the weight of `L_task` in the total loss.
    public let lossWeight: Float
    /// The share of the step's sentences this pass holds (a micro-batch's `B_c / B`, 1 for a whole
    /// batch): `L_task` is the mean over the whole batch's sentences (docs/data-parallel.md).
    public var sentenceShare: Float = 1
    /// `W_t` [d, T] (row-major, `logits = u · W_t + b_t`).
    public let predictorWeight: Parameter
    /// `b_t` [T].
    public let predictorBias: Parameter
    /// `E_task` [T, d].
    public let embeddings: Parameter

    /// `r` [B, d] of the last forward (for inspection: MoE layers get `r` from their layout).
    public private(set) var representation: Tensor?
    /// `P_task` [B, T] of the last forward.
    public private(set) var probabilities: Tensor?
    /// `argmax P_task` per sentence (ties: lower task id).
    public private(set) var predictions: [Int] = []
    /// Gold labels given with the last forward, if any.
    public private(set) var labels: [Int]?
    /// `L_task` of the last training forward (mean over sentences).
    public private(set) var loss: Double?

    /// For each (sentence, dimension) of the last max-pool, the input row that held the maximum
    /// (-1 for an empty sentence): the pool's discrete choice, like a routing decision.
    public var poolingRows: [Int] { poolRows.map { r in (0..<r.count).map { Int(r[$0]) } } ?? [] }

    private var pooled: Tensor?          // u [B, d]
    private var poolRows: IndexBuffer?   // row of the max per (b, j); -1 for empty sentences
    private var pendingBackward = false
    /// Where the predictions go while routing statistics are collected.
    private let collector: RoutingStatisticsCollector?

    public init(modelDim d: Int, tasks t: Int, kind: TaskRepresentation, lossWeight: Float, seed: UInt64,
                encoderLayer: Int = 0, collector: RoutingStatisticsCollector? = nil) {
        precondition(t >= 1 && d >= 1 && encoderLayer >= 0)
        modelDim = d; tasks = t; self.kind = kind; self.lossWeight = lossWeight
        self.encoderLayer = encoderLayer; self.collector = collector
        predictorWeight = Parameter(name: "task_level.predictor.w", shape: [d, t])
        predictorBias = Parameter(name: "task_level.predictor.b", shape: [t])
        embeddings = Parameter(name: "task_level.embeddings", shape: [t, d])
        var rng = RandomGenerator(seed: seed, stream: [0x7A5C])
        rng.fillUniform(predictorWeight.value.pointer, count: d * t, limit: Float(6.0 / Double(d + t)).squareRoot())
        rng.fillNormal(embeddings.value.pointer, count: t * d, std: 1 / Float(d).squareRoot())
    }

    public var parameters: [Parameter] { [predictorWeight, predictorBias, embeddings] }

    /// Runs the predictor on `x` [B·L, d] (the first encoder MoE sub-block's input) and returns
    /// `r` [B, d]. Training needs gold labels (for `L_task`); the gold variant always needs them.
    @discardableResult
    public func forward(_ x: Tensor, layout: TokenLayout, training: Bool) throws -> Tensor {
        let start = MonotonicClock.seconds()
        defer { phaseTimer?.add(.routing, since: start) }
        let b = layout.batchSize, len = layout.length, d = modelDim, t = tasks
        guard x.rows == layout.rows, x.columns == d else {
            throw MoEError.wrongShape("task level input \(x.shape), layout has \(layout.rows) rows of width \(d)")
        }
        if let labels = layout.taskLabels {
            guard labels.count == b else { throw MoEError.wrongShape("\(labels.count) task labels for \(b) sentences") }
            for l in labels where l < 0 || l >= t { throw MoEError.taskLabelOutOfRange(label: l, tasks: t) }
        } else if training {
            throw MoEError.missingTaskLabels("training the task predictor (L_task)")
        } else if kind == .gold {
            throw MoEError.missingTaskLabels("the gold routing variant uses r = E_task[gold]")
        }
        // u = maxpool over non-pad rows
        let u = Tensor(shape: [b, d]), rows = IndexBuffer(count: b * d, repeating: -1)
        layout.mask.withUnsafeBufferPointer { mask in
            let mp = mask.baseAddress!
            // Sentences are independent: split over the BLAS thread count (same bits for any split).
            Parallel.forEachRange(b, threads: BLASThreads.current, minimumChunk: 4) { sentences in
                for s in sentences {
                    let up = u.pointer + s * d, rp = rows.pointer + s * d
                    for i in 0..<len where mp[s * len + i] != 0 {
                        let row = s * len + i
                        RoutingKernels.maxPoolRow(x.pointer + row * d, row: Int32(row), into: up, rows: rp, count: d)
                    }
                }
            }
        }
        // P_task = softmax(u W_t + b_t)
        let p = Tensor(shape: [b, t])
        Kernels.addRowBias(predictorBias.value.pointer, to: p.pointer, rows: b, cols: t)
        gemm(m: b, n: t, k: d, a: u.pointer, b: predictorWeight.value.pointer, beta: 1, c: p.pointer)
        RoutingKernels.softmaxRows(p.pointer, rows: b, cols: t)
        var preds = [Int](repeating: 0, count: b)
        for s in 0..<b {
            var best = 0
            for j in 1..<t where p[s * t + j] > p[s * t + best] { best = j }
            preds[s] = best
        }
        // r
        let r: Tensor
        switch kind {
        case .mixed:
            r = Tensor(shape: [b, d])
            gemm(m: b, n: d, k: t, a: p.pointer, b: embeddings.value.pointer, c: r.pointer)
        case .gold, .argmax:
            r = gatherRows(embeddings.value, kind == .gold ? layout.taskLabels! : preds)
        }
        if training, let labels = layout.taskLabels {
            var l = 0.0
            for s in 0..<b { l -= Double(logf(max(p[s * t + labels[s]], 1e-30))) }
            loss = l / Double(b)
        } else { loss = nil }
        representation = r; probabilities = p; predictions = preds; labels = layout.taskLabels
        pooled = u; poolRows = rows
        pendingBackward = training
        collector?.statistics?.recordPredictions(preds, gold: layout.taskLabels)
        return r
    }

    /// Backward of the predictor and `E_task`, given `dr` = `∂L/∂r` [B, d] summed over every
    /// MoE layer, including `α · ∂L_task`; adds `∂L/∂x` of the max-pool into `dx` [B·L, d].
    public func backward(representationGradient dr: Tensor, into dx: Tensor) throws {
        let start = MonotonicClock.seconds()
        defer { phaseTimer?.add(.routingBackward, since: start) }
        guard pendingBackward, let u = pooled, let rows = poolRows, let p = probabilities
        else { throw MoEError.noPendingForward("task level") }
        let b = u.rows, d = modelDim, t = tasks
        guard dr.rows == b, dr.columns == d, dx.columns == d else {
            throw MoEError.wrongShape("task level: ∂L/∂r \(dr.shape) and ∂L/∂x \(dx.shape) for \(b) sentences of width \(d)")
        }
        let dlogits = Tensor(shape: [b, t])
        switch kind {
        case .mixed:
            // dE += Pᵀ · dr ; dP = dr · Eᵀ ; dlogits = P ⊙ (dP − Σ P dP)
            gemm(transA: true, m: t, n: d, k: b, a: p.pointer, b: dr.pointer, beta: 1, c: embeddings.grad.pointer)
            let dp = Tensor(shape: [b, t])
            gemm(transB: true, m: b, n: t, k: d, a: dr.pointer, b: embeddings.value.pointer, c: dp.pointer)
            for s in 0..<b {
                RoutingKernels.softmaxBackward(p: p.pointer + s * t, dp: dp.pointer + s * t,
                                               dz: dlogits.pointer + s * t, count: t)
            }
        case .gold, .argmax:
            let ids = kind == .gold ? labels! : predictions
            for s in 0..<b { Kernels.add(dr.pointer + s * d, into: embeddings.grad.pointer + ids[s] * d, count: d) }
        }
        if let labels {
            let scale = lossWeight * sentenceShare / Float(b)
            for s in 0..<b {
                let row = dlogits.pointer + s * t, ps = p.pointer + s * t
                for j in 0..<t { row[j] += scale * (ps[j] - (j == labels[s] ? 1 : 0)) }
            }
        }
        gemm(transA: true, m: d, n: t, k: b, a: u.pointer, b: dlogits.pointer, beta: 1, c: predictorWeight.grad.pointer)
        Kernels.addColumnSums(dlogits.pointer, rows: b, cols: t, into: predictorBias.grad.pointer)
        let du = Tensor(shape: [b, d])
        gemm(transB: true, m: b, n: d, k: t, a: dlogits.pointer, b: predictorWeight.value.pointer, c: du.pointer)
        for s in 0..<b {
            for j in 0..<d {
                let row = Int(rows[s * d + j])
                if row >= 0 { dx.pointer[row * d + j] += du[s * d + j] }
            }
        }
        pendingBackward = false
    }
}
