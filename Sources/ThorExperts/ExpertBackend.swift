import ThorTensor

/// Tokens for one expert of one MoE layer: `tokens` is `[n, d]`.
public struct ExpertBatch: @unchecked Sendable {
    public var expert: Int
    public var tokens: Tensor
    public init(expert: Int, tokens: Tensor) { self.expert = expert; self.tokens = tokens }
}

/// Errors an expert backend reports (the distributed one adds transport errors).
public enum ExpertBackendError: Error, CustomStringConvertible, Equatable {
    case unknownExpert(ExpertKey)
    case noPendingForward(layer: Int)
    case shapeMismatch(String)
    case missingState(String)

    public var description: String {
        switch self {
        case .unknownExpert(let k): return "expert \(k) is not hosted here"
        case .noPendingForward(let l): return "backward for MoE layer \(l) without a training forward before it"
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        case .missingState(let s): return "missing expert state: \(s)"
        }
    }
}

/// Where routed experts run: in this process, or on expert-worker processes.
///
/// The MoE layer routes and combines; the backend only runs token batches
/// through experts. Both implementations must give bit-identical results, so
/// everything order-dependent (combine order, norm summation) happens in the
/// caller, in canonical expert order.
public protocol ExpertBackend: AnyObject {
    /// The experts' common shape and initialization seed.
    var spec: ExpertSpec { get }

    /// Runs `batches[i].tokens` through expert `batches[i].expert` of MoE layer
    /// `layer` and returns the outputs in the same order. With `training`, the
    /// activations are kept for the next `backward` of the same layer.
    func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor]

    /// Backward of the last training `forward` of `layer`: `gradients[i]` is
    /// `w · ∂L/∂y` for `batches[i]` of that forward (same experts, same order,
    /// same row counts). Accumulates parameter gradients; returns `∂L/∂x` per batch.
    func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor]

    /// Squared L2 norm of each hosted expert's accumulated gradient
    /// (summed by the caller in key order, whatever the placement).
    func squaredGradientNorms() throws -> [ExpertKey: Double]

    /// Adam step on every expert with gradient `clipScale · grad`; zeroes gradients.
    /// `step` counts optimizer steps from 1.
    func step(learningRate: Float, clipScale: Float, step: Int) throws

    /// Drops accumulated gradients and kept activations.
    func zeroGradients() throws

    /// Every expert's tensors (weights and Adam moments) by name
    /// (`moe.L.experts.E.w1`, `….w1.adam_m`, `….w1.adam_v`, …).
    func exportState() throws -> [ExpertKey: [String: Tensor]]

    /// Replaces the listed experts' tensors (names as in `exportState`).
    func importState(_ state: [ExpertKey: [String: Tensor]]) throws
}

/// A set of experts living in one process, with their kept activations.
/// `InProcessExpertBackend` is one; an expert worker wraps another.
public final class ExpertHost: @unchecked Sendable {
    public let spec: ExpertSpec
    public private(set) var experts: [ExpertKey: Expert]
    private var pending: [Int: [(ExpertKey, FeedForwardActivations)]] = [:]

    /// Tasks of one call (row chunks and gradient tiles of every expert, see `ExpertPartition`)
    /// run concurrently on up to this many threads, each with one BLAS thread, so results
    /// never depend on it.
    public let threads: Int
    /// How expert work is cut into tasks: the same on every host of a cluster.
    public let partition: ExpertPartition
    private let scratch = ScratchPool()
    /// Storage reused across steps: per MoE layer for training forwards (outputs and kept
    /// activations), and one ring for every backward (see `Workspace`, `WorkspaceRing`). The
    /// backward ring has room for the replies an expert worker keeps (its last 4) and the call
    /// in progress: backward calls of successive layers follow each other.
    private var forwardSpace: [Int: WorkspaceRing] = [:]
    private let backwardSpace = WorkspaceRing(limit: 6)
    /// Experts whose gradient may hold a backward's contribution (a backward since the last
    /// step, zeroing or import), and where `backward` parks such a gradient meanwhile.
    private var accumulating: Set<ExpertKey> = []
    private let carrySpace = Workspace()

    public init(spec: ExpertSpec, keys: [ExpertKey], threads: Int = 1, partition: ExpertPartition = .standard) {
        self.spec = spec
        self.threads = max(1, threads)
        self.partition = partition
        var e: [ExpertKey: Expert] = [:]
        for k in keys { e[k] = Expert(key: k, spec: spec) }
        experts = e
    }

    /// Hosted keys in canonical order.
    public var keys: [ExpertKey] { experts.keys.sorted() }

    /// Checks that `layer` and the experts of `batches` are hosted and the widths match,
    /// before anything is computed (bad requests change no state).
    public func validate(layer: Int, batches: [ExpertBatch]) throws {
        var seen = Set<Int>()
        for b in batches {
            let k = ExpertKey(layer: layer, expert: b.expert)
            guard seen.insert(b.expert).inserted else {
                throw ExpertBackendError.shapeMismatch("expert \(k) appears twice in one request")
            }
            guard experts[k] != nil else { throw ExpertBackendError.unknownExpert(k) }
            guard b.tokens.columns == spec.modelDim, b.tokens.shape.count == 2 else {
                throw ExpertBackendError.shapeMismatch("expert \(k) takes [n, \(spec.modelDim)], got \(b.tokens.shape)")
            }
        }
    }

    public func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        try validate(layer: layer, batches: batches)
        let hosted = batches.map { experts[ExpertKey(layer: layer, expert: $0.expert)]! }
        let work = zip(hosted, batches).map { ExpertWork(weights: $0.weights, rows: $1.tokens.rows) }
        // Training forwards of a layer reuse that layer's storage (its previous step is done by now);
        // other forwards allocate, so they never touch what a pending backward needs.
        var space: Workspace? = nil
        if training {
            pending[layer] = nil   // releases the previous step's activations before the storage is checked
            if forwardSpace[layer] == nil { forwardSpace[layer] = WorkspaceRing() }
            space = forwardSpace[layer]!.next()
        }
        let results = ChunkedFeedForward.forward(work, inputs: batches.map(\.tokens), partition: partition, threads: threads,
                                                 workspace: space)
        if training { pending[layer] = results.enumerated().map { (hosted[$0.offset].key, $0.element.1) } }
        return results.map { $0.0 }
    }

    public func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        guard let kept = pending[layer] else { throw ExpertBackendError.noPendingForward(layer: layer) }
        guard kept.count == gradients.count else {
            throw ExpertBackendError.shapeMismatch("layer \(layer): \(gradients.count) gradient batches for \(kept.count) forward batches")
        }
        for (i, g) in gradients.enumerated() {
            let (k, acts) = kept[i]
            guard k.expert == g.expert, g.tokens.rows == acts.input.rows, g.tokens.columns == spec.modelDim else {
                throw ExpertBackendError.shapeMismatch(
                    "layer \(layer) batch \(i): gradient for expert \(g.expert) \(g.tokens.shape), forward had expert \(k.expert) [\(acts.input.rows), \(spec.modelDim)]")
            }
        }
        pending[layer] = nil
        let work = kept.map { ExpertWork(weights: experts[$0.0]!.weights, rows: $0.1.input.rows) }
        // Each call's gradient is computed alone and then added to what earlier calls left, so a
        // step in micro-batches sums per-micro-batch gradients in call order, g = g_0 + g_1 + …,
        // whatever the GEMMs' internal blocking (docs/data-parallel.md). An expert whose gradient
        // is still zero (every whole-batch step) computes straight into it: the same bits, no copies.
        // Experts without rows get no contribution and keep their gradient untouched.
        let active = kept.indices.filter { gradients[$0].tokens.rows > 0 }.map { kept[$0].0 }
        let carry = carryOut(active.filter { accumulating.contains($0) }.map { experts[$0]!.parameters })
        let dx = ChunkedFeedForward.backward(work, gradients: gradients.map(\.tokens), saved: kept.map { $0.1 },
                                             partition: partition, threads: threads, scratch: scratch,
                                             workspace: backwardSpace.next())
        for (p, parked) in carry { Kernels.add(parked.pointer, into: p.grad.pointer, count: p.count) }
        accumulating.formUnion(active)
        return dx
    }

    /// Moves the gradients of `parameters` (per expert) into `carrySpace` and zeroes them; returns
    /// each parameter with its parked gradient, to be added back after the call's own gradient.
    private func carryOut(_ parameters: [[Parameter]]) -> [(Parameter, Tensor)] {
        let all = parameters.flatMap { $0 }
        guard !all.isEmpty else { return [] }
        carrySpace.begin(Workspace.size(all.map(\.count)))
        return all.map { p in
            let parked = carrySpace.tensor(p.shape)
            parked.copy(from: p.grad)
            p.grad.zero()
            return (p, parked)
        }
    }

    public func squaredGradientNorms() -> [ExpertKey: Double] {
        // One expert per task on the host's threads; each norm is the same serial sum whichever
        // thread computes it, so the bits never depend on `threads`.
        let ks = keys, es = ks.map { experts[$0]! }
        return Dictionary(uniqueKeysWithValues: zip(ks, Parallel.map(ks.count, threads: threads) { es[$0].squaredGradientNorm() }))
    }

    public func step(learningRate: Float, clipScale: Float, step: Int) {
        Adam.update(keys.flatMap { experts[$0]!.parameters }, learningRate: learningRate, clipScale: clipScale,
                    step: step, settings: spec.adam, threads: threads)
        pending.removeAll()
        accumulating.removeAll()   // Adam zeroed every gradient
    }

    public func zeroGradients() {
        for e in experts.values { for p in e.parameters { p.grad.zero() } }
        pending.removeAll()
        accumulating.removeAll()
    }

    public func exportState() -> [ExpertKey: [String: Tensor]] {
        var r: [ExpertKey: [String: Tensor]] = [:]
        for (k, e) in experts {
            var s: [String: Tensor] = [:]
            for p in e.parameters {
                s[p.name] = Tensor(copying: p.value)
                s[p.name + ".adam_m"] = Tensor(copying: p.m)
                s[p.name + ".adam_v"] = Tensor(copying: p.v)
            }
            r[k] = s
        }
        return r
    }

    /// Validates every tensor first, then replaces: a bad state changes nothing.
    /// Experts not hosted yet are created (a worker receiving a new assignment).
    public func importState(_ state: [ExpertKey: [String: Tensor]]) throws {
        var staged: [ExpertKey: Expert] = [:]
        for (k, tensors) in state {
            let e = Expert(key: k, spec: spec)
            for p in e.parameters {
                for (suffix, dst) in [("", p.value), (".adam_m", p.m), (".adam_v", p.v)] {
                    guard let t = tensors[p.name + suffix] else {
                        throw ExpertBackendError.missingState("\(p.name + suffix) for expert \(k)")
                    }
                    guard t.count == dst.count else {
                        throw ExpertBackendError.shapeMismatch("\(p.name + suffix): \(t.shape), expected \(dst.shape)")
                    }
                    dst.copy(from: t)
                }
            }
            staged[k] = e
        }
        for (k, e) in staged { experts[k] = e }
        pending.removeAll()
        accumulating.subtract(staged.keys)   // new experts, zero gradients
    }

    /// Stops hosting `keys` (e.g. after a placement change).
    public func remove(_ keys: [ExpertKey]) {
        for k in keys { experts[k] = nil }
        pending.removeAll()
        accumulating.subtract(keys)
    }
}

/// Up to `limit` workspaces of one kind of call, taken in turn: a call gets the first whose
/// storage no earlier call's tensors hold any more. An expert worker keeps its last few replies
/// (to answer a resent request), and with them the outputs of its last call: with one workspace
/// every call would then find its storage held and take fresh pages (page faults on every
/// element of y, h, a or ∂x, ∂h); with two, a one-layer step alternates between them. When
/// every workspace is held, the first one gets a fresh block (`Workspace.begin`): storage a
/// caller still holds is never carved again.
final class WorkspaceRing {
    private var spaces: [Workspace] = []
    let limit: Int

    init(limit: Int = 2) { self.limit = max(1, limit) }

    func next() -> Workspace {
        if let free = spaces.first(where: { $0.isReusable }) { return free }
        if spaces.count < limit {
            spaces.append(Workspace())
            return spaces[spaces.count - 1]
        }
        return spaces[0]
    }
}

/// Every expert in this process: the reference the distributed backend must match bit for bit.
public final class InProcessExpertBackend: ExpertBackend, @unchecked Sendable {
    public let host: ExpertHost
    public var spec: ExpertSpec { host.spec }

    /// `threads`: tasks of one request computed concurrently (results do not depend on it).
    public init(spec: ExpertSpec, keys: [ExpertKey], threads: Int = 1, partition: ExpertPartition = .standard) {
        host = ExpertHost(spec: spec, keys: keys, threads: threads, partition: partition)
    }

    public func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        try host.forward(layer: layer, batches: batches, training: training)
    }
    public func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        try host.backward(layer: layer, gradients: gradients)
    }
    public func squaredGradientNorms() throws -> [ExpertKey: Double] { host.squaredGradientNorms() }
    public func step(learningRate: Float, clipScale: Float, step: Int) throws {
        host.step(learningRate: learningRate, clipScale: clipScale, step: step)
    }
    public func zeroGradients() throws { host.zeroGradients() }
    public func exportState() throws -> [ExpertKey: [String: Tensor]] { host.exportState() }
    public func importState(_ state: [ExpertKey: [String: Tensor]]) throws { try host.importState(state) }
}

