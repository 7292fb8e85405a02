import ThorTensor

/// Tokens for one expert of one MoE layer: `tokens` is `[n, d]`.
public struct ExpertBatch: @unchecked Sendable {
    public var expert: Int
    public var tokens: Tensor
    public init(expert: Int, tokens: Tensor) { self.expert = expert; self.tokens = tokens }
}

/// Which micro-batch of a step a forward or backward belongs to (`training.micro_batches`,
/// docs/data-parallel.md): shard `index` of `count`. A host keeps each shard's kept activations
/// and expert gradients apart and sums the shards' gradients in shard order 0 … count − 1,
/// whatever order their calls arrive in. On the wire: `Envelope.shard` (protocol 4).
public struct Shard: Hashable, Sendable, CustomStringConvertible {
    public var index: Int
    public var count: Int
    public init(index: Int, count: Int) { self.index = index; self.count = count }

    /// The whole batch: shard 0 of 1 (every step without micro-batches).
    public static let whole = Shard(index: 0, count: 1)

    public var description: String { "shard \(index) of \(count)" }

    /// Throws `badShard` unless `0 ≤ index < count`.
    public func validate() throws {
        guard count >= 1 else { throw ExpertBackendError.badShard("\(self): a step has at least 1 shard") }
        guard index >= 0, index < count else {
            throw ExpertBackendError.badShard("\(self) is out of range (shards are 0 … \(count - 1))")
        }
    }
}

/// Errors an expert backend reports (the distributed one adds transport errors).
public enum ExpertBackendError: Error, CustomStringConvertible, Equatable {
    case unknownExpert(ExpertKey)
    case noPendingForward(layer: Int)
    /// A backward of a micro-batch shard (count > 1) without that shard's training forward.
    case noPendingShardForward(layer: Int, shard: Shard)
    case shapeMismatch(String)
    case missingState(String)
    /// A shard out of range, another shard count within one step, or gradients asked for while a
    /// shard's backward is missing.
    case badShard(String)

    public var description: String {
        switch self {
        case .unknownExpert(let k): return "expert \(k) is not hosted here"
        case .noPendingForward(let l): return "backward for MoE layer \(l) without a training forward before it"
        case .noPendingShardForward(let l, let s):
            return "backward of \(s) for MoE layer \(l) without a training forward of that shard before it"
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        case .missingState(let s): return "missing expert state: \(s)"
        case .badShard(let s): return "bad shard: \(s)"
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

    /// The micro-batch shard the following `forward` and `backward` calls belong to
    /// (`Shard.whole` unless the Trainer runs a step in micro-batches; it sets each shard's
    /// index before that shard's passes and puts `.whole` back after the step's shards).
    var shard: Shard { get set }

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
    /// Activations kept by training forwards for their backward, per (shard index, MoE layer).
    private var pending: [ShardLayer: [(ExpertKey, FeedForwardActivations)]] = [:]
    /// The shard count of the step in progress (its first training forward sets it; a step's
    /// requests must agree); nil between steps.
    private var stepShards: Int?

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
    /// Shard c > 0's gradient of each expert (tensors shaped like its parameters), computed from
    /// zero by that shard's backward and added to the expert's gradient in shard order by
    /// `settleGradients` (shard 0, first in that order, computes straight into the gradient).
    /// The storage stays for the next steps; `held` says which hold a contribution of this step.
    private var shardGradients: [ShardExpert: [Tensor]] = [:]
    private var held: Set<ShardExpert> = []

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

    public func forward(layer: Int, shard: Shard = .whole, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        try validate(layer: layer, batches: batches)
        try shard.validate()
        if training { try requireStepShards(shard) }
        let hosted = batches.map { experts[ExpertKey(layer: layer, expert: $0.expert)]! }
        let work = zip(hosted, batches).map { ExpertWork(weights: $0.weights, rows: $1.tokens.rows) }
        // Training forwards of a layer reuse that layer's storage (its previous step is done by now);
        // other forwards allocate, so they never touch what a pending backward needs.
        var space: Workspace? = nil
        if training {
            stepShards = shard.count
            pending[ShardLayer(shard: shard.index, layer: layer)] = nil   // releases the previous step's activations before the storage is checked
            if forwardSpace[layer] == nil { forwardSpace[layer] = WorkspaceRing() }
            space = forwardSpace[layer]!.next()
        }
        let results = ChunkedFeedForward.forward(work, inputs: batches.map(\.tokens), partition: partition, threads: threads,
                                                 workspace: space)
        if training { pending[ShardLayer(shard: shard.index, layer: layer)] = results.enumerated().map { (hosted[$0.offset].key, $0.element.1) } }
        return results.map { $0.0 }
    }

    /// Shard `shard.index`'s call adds its gradient to its own buffers (`shard.index` > 0) or the
    /// experts' gradients (shard 0), each computed from zero; `settleGradients` sums them in shard order.
    public func backward(layer: Int, shard: Shard = .whole, gradients: [ExpertBatch]) throws -> [Tensor] {
        try shard.validate()
        let slot = ShardLayer(shard: shard.index, layer: layer)
        guard let kept = pending[slot] else {
            throw shard.count == 1 ? ExpertBackendError.noPendingForward(layer: layer)
                                   : ExpertBackendError.noPendingShardForward(layer: layer, shard: shard)
        }
        try requireStepShards(shard)
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
        pending[slot] = nil
        if shard.index > 0 { return shardBackward(kept, gradients, shard: shard.index) }
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
        let parked = park(parameters.flatMap { $0.map(\.grad) })
        return zip(parameters.flatMap { $0 }, parked).map { ($0, $1.1) }
    }

    /// Copies each of `gradients` into `carrySpace` and zeroes it; returns each with its copy.
    private func park(_ gradients: [Tensor]) -> [(Tensor, Tensor)] {
        guard !gradients.isEmpty else { return [] }
        carrySpace.begin(Workspace.size(gradients.map(\.count)))
        return gradients.map { g in
            let parked = carrySpace.tensor(g.shape)
            parked.copy(from: g)
            g.zero()
            return (g, parked)
        }
    }

    /// Backward of shard `shard` > 0: every expert with rows gets its gradient computed from zero
    /// into its buffers of that shard (a second call of the same shard in one step adds to them as
    /// `backward` does to the gradient: parked, computed from zero, added back).
    private func shardBackward(_ kept: [(ExpertKey, FeedForwardActivations)], _ gradients: [ExpertBatch], shard: Int) -> [Tensor] {
        var destination: [[Tensor]?] = []
        var again: [Tensor] = []
        var added: [ShardExpert] = []
        for (i, (k, _)) in kept.enumerated() {
            guard gradients[i].tokens.rows > 0 else { destination.append(nil); continue }
            let slot = ShardExpert(shard: shard, key: k)
            if shardGradients[slot] == nil {
                shardGradients[slot] = experts[k]!.parameters.map { Tensor(shape: $0.shape) }
            } else if !held.contains(slot) {
                for t in shardGradients[slot]! { t.zero() }
            } else {
                again += shardGradients[slot]!
            }
            destination.append(shardGradients[slot]!)
            added.append(slot)
        }
        let carry = park(again)
        let work = kept.enumerated().map {
            ExpertWork(weights: experts[$0.element.0]!.weights, rows: $0.element.1.input.rows, gradients: destination[$0.offset])
        }
        let dx = ChunkedFeedForward.backward(work, gradients: gradients.map(\.tokens), saved: kept.map { $0.1 },
                                             partition: partition, threads: threads, scratch: scratch,
                                             workspace: backwardSpace.next())
        for (g, parked) in carry { Kernels.add(parked.pointer, into: g.pointer, count: g.count) }
        held.formUnion(added)
        return dx
    }

    /// Refuses a training request whose shard count differs from the step in progress.
    private func requireStepShards(_ shard: Shard) throws {
        if let n = stepShards, n != shard.count {
            throw ExpertBackendError.badShard(
                "\(shard) in a step of \(n) shards: every request of a step has the same shard count (ZeroGradients drops the step)")
        }
    }

    /// Shards (count > 1) with a training forward kept but no backward yet, as (shard, layer), sorted.
    public var shardsMissingBackward: [(shard: Int, layer: Int)] {
        guard let n = stepShards, n > 1 else { return [] }
        return pending.keys.map { ($0.shard, $0.layer) }.sorted { ($0.0, $0.1) < ($1.0, $1.1) }
    }

    /// Makes every expert's gradient the step's sum over shards, in shard order: `g = g_0; g += g_1;
    /// …; g += g_{C−1}` (shards without rows for an expert skipped; an expert without shard 0 starts
    /// from its lowest shard's buffer, copied) — the same float adds as backward calls arriving in
    /// shard order, so the order the shards arrived in cannot change a bit. Throws `badShard`,
    /// changing nothing, while a shard of a micro-batched step (count > 1) has a training forward
    /// without its backward (its gradient would be incomplete). `squaredGradientNorms` and `step`
    /// sum what is there without that check; a worker and `InProcessExpertBackend` call this first.
    public func settleGradients() throws {
        if let (shard, layer) = shardsMissingBackward.first {
            throw ExpertBackendError.badShard(
                "shard \(shard) of \(stepShards!) has a training forward of MoE layer \(layer) without its backward, "
                    + "so the step's expert gradients are incomplete (send that Backward, or ZeroGradients to drop the step)")
        }
        foldShardGradients()
    }

    /// Adds the held shard buffers to the experts' gradients in shard order (see `settleGradients`).
    private func foldShardGradients() {
        guard !held.isEmpty else { return }
        for slot in held.sorted(by: { ($0.key, $0.shard) < ($1.key, $1.shard) }) {
            let parameters = experts[slot.key]!.parameters
            for (p, g) in zip(parameters, shardGradients[slot]!) {
                if accumulating.contains(slot.key) { Kernels.add(g.pointer, into: p.grad.pointer, count: p.count) } else { p.grad.copy(from: g) }
            }
            accumulating.insert(slot.key)
        }
        held.removeAll()
    }

    /// Shard buffers allocated (kept across steps for reuse; dropped with their experts).
    public var shardGradientBuffers: Int { shardGradients.count }

    /// Whether shard `shard`'s gradient buffer of expert `key` is allocated (a backward of that
    /// shard with rows for it allocates none then; `WorkerLimits` counts the others first).
    public func hasShardGradient(shard: Int, key: ExpertKey) -> Bool { shardGradients[ShardExpert(shard: shard, key: key)] != nil }

    public func squaredGradientNorms() -> [ExpertKey: Double] {
        foldShardGradients()
        // One expert per task on the host's threads; each norm is the same serial sum whichever
        // thread computes it, so the bits never depend on `threads`.
        let ks = keys, es = ks.map { experts[$0]! }
        return Dictionary(uniqueKeysWithValues: zip(ks, Parallel.map(ks.count, threads: threads) { es[$0].squaredGradientNorm() }))
    }

    public func step(learningRate: Float, clipScale: Float, step: Int) {
        foldShardGradients()
        Adam.update(keys.flatMap { experts[$0]!.parameters }, learningRate: learningRate, clipScale: clipScale,
                    step: step, settings: spec.adam, threads: threads)
        pending.removeAll()
        accumulating.removeAll()   // Adam zeroed every gradient
        stepShards = nil
    }

    /// Drops every gradient (shard buffers included; their storage stays for reuse) and kept activations.
    public func zeroGradients() {
        for e in experts.values { for p in e.parameters { p.grad.zero() } }
        pending.removeAll()
        accumulating.removeAll()
        held.removeAll()
        stepShards = nil
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
        dropShardGradients(of: Set(staged.keys))
    }

    /// Forgets the shard buffers of `keys` (their experts were replaced or removed).
    private func dropShardGradients(of keys: Set<ExpertKey>) {
        for slot in shardGradients.keys where keys.contains(slot.key) { shardGradients[slot] = nil }
        held = held.filter { !keys.contains($0.key) }
        if held.isEmpty && pending.isEmpty { stepShards = nil }
    }

    /// Stops hosting `keys` (e.g. after a placement change).
    public func remove(_ keys: [ExpertKey]) {
        for k in keys { experts[k] = nil }
        pending.removeAll()
        accumulating.subtract(keys)
        dropShardGradients(of: Set(keys))
    }
}

/// A shard's kept activations of one MoE layer.
struct ShardLayer: Hashable {
    let shard: Int
    let layer: Int
}

/// One expert's gradient buffers of one shard.
struct ShardExpert: Hashable {
    let shard: Int
    let key: ExpertKey
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
    public var shard: Shard = .whole

    /// `threads`: tasks of one request computed concurrently (results do not depend on it).
    public init(spec: ExpertSpec, keys: [ExpertKey], threads: Int = 1, partition: ExpertPartition = .standard) {
        host = ExpertHost(spec: spec, keys: keys, threads: threads, partition: partition)
    }

    public func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        try host.forward(layer: layer, shard: shard, batches: batches, training: training)
    }
    public func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        try host.backward(layer: layer, shard: shard, gradients: gradients)
    }
    public func squaredGradientNorms() throws -> [ExpertKey: Double] {
        try host.settleGradients()
        return host.squaredGradientNorms()
    }
    public func step(learningRate: Float, clipScale: Float, step: Int) throws {
        try host.settleGradients()
        host.step(learningRate: learningRate, clipScale: clipScale, step: step)
    }
    public func zeroGradients() throws { host.zeroGradients() }
    public func exportState() throws -> [ExpertKey: [String: Tensor]] { host.exportState() }
    public func importState(_ state: [ExpertKey: [String: Tensor]]) throws { try host.importState(state) }
}

