import ThorTensor
import Dispatch

/// How an `ExpertHost` cuts expert work into tasks: fixed sizes, never derived from the
/// thread count, the worker count or the placement, so the bits of every result depend
/// only on the tokens each expert gets.
///
/// - forward, and the `∂L/∂x` part of backward, run per **row chunk**: the batch's rows cut
///   into units of `rowsPerChunk` (the last one shorter), up to `unitsPerChunk` consecutive
///   full units per chunk, and the short last unit always a chunk of its own (`rowChunks`);
/// - the weight gradients run per **tile** of the gradient matrix (`columnsPerTile`
///   columns of `∂W1` [d, f1], rows of `∂W2` [dFF, d]), each tile one GEMM over all of the
///   expert's rows, so every gradient element is reduced over the rows in one fixed order
///   (and added to the accumulated gradient once per call).
///
/// Every task runs with one BLAS thread; tasks of all experts of a request share the
/// host's threads, so one busy expert no longer leaves the other cores idle.
public struct ExpertPartition: Sendable, Equatable {
    public var rowsPerChunk: Int
    public var columnsPerTile: Int
    /// Full units of `rowsPerChunk` rows one row chunk may take (1: every unit is a chunk).
    public var unitsPerChunk: Int

    public init(rowsPerChunk: Int, columnsPerTile: Int, unitsPerChunk: Int = 1) {
        precondition(rowsPerChunk > 0 && columnsPerTile > 0 && unitsPerChunk > 0, "ExpertPartition sizes must be positive")
        self.rowsPerChunk = rowsPerChunk
        self.columnsPerTile = columnsPerTile
        self.unitsPerChunk = unitsPerChunk
    }

    /// What every host of a cluster uses (the coordinator's in-process host and every worker;
    /// all of them load the same OpenBLAS kernel set, see `BLASCore`). Units of 256 rows; with
    /// OpenBLAS's SkylakeX kernels, chunks of up to 4 full units: each row GEMM call packs the
    /// expert's whole weight matrix, so 1,024-row calls run 5–10 % faster than 256-row ones
    /// (single-thread sgemm at d = 512, d_ff = 2048: 81–94 → 92–103 GFLOPS). With SkylakeX,
    /// merging full units keeps the bits of 256-row chunks: it computes a row the same way in
    /// any call of ≥ 256 rows; only calls of a few rows take its small-matrix kernel (other
    /// bits), and the short last unit stays a chunk of its own, as it was with 256-row chunks.
    /// The Haswell kernels give other bits for merged calls, so there every unit stays a chunk
    /// (`ExpertComputeTests` checks that the standard partition gives the bits of 256-row chunks).
    public static let standard = ExpertPartition(rowsPerChunk: 256, columnsPerTile: 256,
                                                 unitsPerChunk: BLASCore.same(BLASCore.loaded, "SkylakeX") ? 4 : 1)

    /// Row chunks of a batch of `count` rows: runs of up to `unitsPerChunk` full units of
    /// `rowsPerChunk` rows, then the short last unit (if any) alone.
    public func rowChunks(_ count: Int) -> [Range<Int>] {
        let full = count / rowsPerChunk * rowsPerChunk
        var chunks = Self.pieces(full, rowsPerChunk * unitsPerChunk)
        if full < count { chunks.append(full..<count) }
        return chunks
    }

    /// `0..<count` cut into consecutive pieces of `size` (the last one shorter).
    static func pieces(_ count: Int, _ size: Int) -> [Range<Int>] {
        stride(from: 0, to: count, by: size).map { $0..<min(count, $0 + size) }
    }
}

/// One expert's batch in a host call: its weights, the input rows, and where backward adds the
/// weights' gradients (`w1`, `b1`, `w2`, `b2` in parameter order; default: the parameters' own
/// `grad`, or a shard's buffers of those shapes, see `ExpertHost`).
struct ExpertWork {
    let weights: FeedForwardWeights
    let rows: Int
    let dw1: UnsafeMutablePointer<Float>, db1: UnsafeMutablePointer<Float>
    let dw2: UnsafeMutablePointer<Float>, db2: UnsafeMutablePointer<Float>

    init(weights: FeedForwardWeights, rows: Int, gradients: [Tensor]? = nil) {
        self.weights = weights
        self.rows = rows
        let g = gradients ?? weights.parameters.map(\.grad)
        precondition(g.count == 4 && zip(g, weights.parameters).allSatisfy { $0.count == $1.count },
                     "ExpertWork: gradient destinations must have the parameters' shapes")
        dw1 = g[0].pointer; db1 = g[1].pointer; dw2 = g[2].pointer; db2 = g[3].pointer
    }
}

/// Runs `tasks` (largest `cost` first) on up to `threads` threads, each task with one BLAS
/// thread; `body(task, slot)` gets a slot index unique among the tasks running at the same
/// time (for per-thread scratch). Restores the caller's BLAS thread count.
func runTasks<Task>(_ tasks: [Task], threads: Int, cost: (Task) -> Int, _ body: (Task, Int) -> Void) {
    if tasks.isEmpty { return }
    let saved = BLASThreads.current
    BLASThreads.set(1)
    defer { BLASThreads.set(saved) }
    let costs = tasks.map(cost)
    let order = tasks.indices.sorted { costs[$0] > costs[$1] || (costs[$0] == costs[$1] && $0 < $1) }
    let workers = min(max(1, threads), tasks.count)
    if workers == 1 {
        for i in order { body(tasks[i], 0) }
        return
    }
    withoutActuallyEscaping(body) { body in
        nonisolated(unsafe) let run = body
        nonisolated(unsafe) let tasks = tasks
        let counter = TaskCounter()
        DispatchQueue.concurrentPerform(iterations: workers) { slot in
            while true {
                let j = counter.next()
                if j >= order.count { return }
                run(tasks[order[j]], slot)
            }
        }
    }
}

/// Hands out 0, 1, 2, … to concurrent callers.
final class TaskCounter: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var value = 0
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func next() -> Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        value += 1
        return value - 1
    }
}

/// Scratch buffers reused across calls, one per concurrent task slot.
final class ScratchPool: @unchecked Sendable {
    private var buffers: [UnsafeMutablePointer<Float>] = []
    private var capacities: [Int] = []

    /// A buffer of at least `count` floats for each of `slots` slots (contents undefined).
    func prepare(slots: Int, count: Int) -> [UnsafeMutablePointer<Float>] {
        while buffers.count < slots {
            buffers.append(.allocate(capacity: 1))
            capacities.append(1)
        }
        for s in 0..<slots where capacities[s] < count {
            buffers[s].deallocate()
            buffers[s] = .allocate(capacity: count)
            capacities[s] = count
        }
        return Array(buffers[0..<slots])
    }

    deinit { for b in buffers { b.deallocate() } }
}

/// A tensor of `shape` whose contents the caller overwrites entirely (no zero fill).
func uninitializedTensor(_ shape: [Int]) -> Tensor {
    let count = shape.reduce(1, *)
    return Tensor(adopting: .allocate(capacity: max(count, 1)), shape: shape)
}

/// One block of floats that tensors borrow (`Tensor(borrowing:owner:)`); freed with the last of them.
final class StorageBlock: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let capacity: Int
    init(capacity: Int) {
        self.capacity = max(capacity, 1)
        pointer = .allocate(capacity: self.capacity)
    }
    deinit { pointer.deallocate() }
}

/// Storage a host reuses from one call to the next of the same kind (one per MoE layer for the
/// forward outputs and kept activations, one for backward), so a training step allocates and
/// first-touches no new pages for them. The block is reused only when no tensor carved from it
/// is alive any more (`isKnownUniquelyReferenced`): a caller that still holds an earlier call's
/// outputs (or activations kept for a backward) gets fresh storage, never an alias.
final class Workspace {
    private var block: StorageBlock?
    private var used = 0

    /// Whether a call may carve this workspace's block again: no tensor of an earlier call holds it
    /// (a workspace that has no block yet counts as reusable).
    var isReusable: Bool { block == nil || isKnownUniquelyReferenced(&block) }

    /// Starts a call that needs `count` floats in all; `tensor(_:)` then carves them in order.
    func begin(_ count: Int) {
        if !isKnownUniquelyReferenced(&block) || block!.capacity < count {
            block = StorageBlock(capacity: count)
        }
        used = 0
    }

    /// The next `shape`-sized piece of the block (contents undefined: the caller writes every element).
    func tensor(_ shape: [Int]) -> Tensor {
        let count = shape.reduce(1, *)
        precondition(used + count <= block!.capacity, "Workspace: carving past the reserved size")
        // Keep every piece 16-float aligned (64 bytes), as the allocator would.
        let t = Tensor(borrowing: block!.pointer + used, shape: shape, owner: block!)
        used += (count + 15) / 16 * 16
        return t
    }

    /// Floats `begin` must reserve for pieces of `counts` (with the alignment padding).
    static func size(_ counts: [Int]) -> Int { counts.reduce(0) { $0 + ($1 + 15) / 16 * 16 } }
}

/// The chunked forward and backward of a request's experts (see `ExpertPartition`).
enum ChunkedFeedForward {
    /// Forward of every batch: outputs in batch order, and what backward needs.
    /// `workspace`: where y, h and a are carved (fresh allocations without one).
    static func forward(_ work: [ExpertWork], inputs: [Tensor], partition: ExpertPartition, threads: Int,
                        workspace: Workspace? = nil) -> [(Tensor, FeedForwardActivations)] {
        struct Chunk { let batch: Int; let rows: Range<Int> }
        var tasks: [Chunk] = []
        var results: [(Tensor, FeedForwardActivations)] = []
        func shapes(_ w: ExpertWork) -> [[Int]] {
            let f = w.weights.hiddenDim
            return [[w.rows, w.weights.modelDim], [w.rows, w.weights.activation.firstProjectionWidth(dFF: f)], [w.rows, f]]
        }
        workspace?.begin(Workspace.size(work.flatMap { shapes($0).map { $0.reduce(1, *) } }))
        let make: ([Int]) -> Tensor = { workspace?.tensor($0) ?? uninitializedTensor($0) }
        for (i, w) in work.enumerated() {
            let n = w.rows
            let s = shapes(w)
            let y = make(s[0]), h = make(s[1]), a = make(s[2])
            results.append((y, FeedForwardActivations(input: inputs[i], preActivation: h, hidden: a)))
            for r in partition.rowChunks(n) { tasks.append(Chunk(batch: i, rows: r)) }
        }
        runTasks(tasks, threads: threads, cost: { $0.rows.count * work[$0.batch].weights.hiddenDim }) { t, _ in
            let w = work[t.batch].weights, (y, acts) = results[t.batch]
            let d = w.modelDim, f = w.hiddenDim, f1 = w.activation.firstProjectionWidth(dFF: f)
            let r0 = t.rows.lowerBound
            FeedForward.forward(y: y.pointer + r0 * d, h: acts.preActivation.pointer + r0 * f1,
                                a: acts.hidden.pointer + r0 * f, x: acts.input.pointer + r0 * d,
                                w1: w.w1.value.pointer, b1: w.b1.value.pointer,
                                w2: w.w2.value.pointer, b2: w.b2.value.pointer,
                                n: t.rows.count, d: d, dFF: f, activation: w.activation)
        }
        return results
    }

    /// Backward of every batch: accumulates the weights' gradients, returns `∂L/∂x` per batch.
    /// Phase 1: per row chunk `∂a = ∂y·W2ᵀ`, `∂h = act'(h) ⊙ ∂a`, `∂x = ∂h·W1ᵀ`; per tile of
    /// `∂W2` (its rows) `∂W2 += aᵀ·∂y`; `∂b2 += Σ_rows ∂y`. Phase 2 (needs all of `∂h`): per
    /// tile of `∂W1` (its columns) `∂W1 += xᵀ·∂h` and `∂b1 += Σ_rows ∂h`.
    /// `workspace`: where ∂x and ∂h are carved (fresh allocations without one).
    static func backward(_ work: [ExpertWork], gradients: [Tensor], saved: [FeedForwardActivations],
                         partition: ExpertPartition, threads: Int, scratch: ScratchPool,
                         workspace: Workspace? = nil) -> [Tensor] {
        enum Task { case rows(Int, Range<Int>), w2(Int, Range<Int>), b2(Int), w1(Int, Range<Int>) }
        var phase1: [Task] = [], phase2: [Task] = []
        var dxs: [Tensor] = [], dhs: [Tensor] = []
        var maxChunk = 1
        workspace?.begin(Workspace.size(work.flatMap {
            [$0.rows * $0.weights.modelDim, $0.rows * $0.weights.activation.firstProjectionWidth(dFF: $0.weights.hiddenDim)]
        }))
        let make: ([Int]) -> Tensor = { workspace?.tensor($0) ?? uninitializedTensor($0) }
        for (i, w) in work.enumerated() {
            let n = w.rows, d = w.weights.modelDim, f = w.weights.hiddenDim
            let f1 = w.weights.activation.firstProjectionWidth(dFF: f)
            dxs.append(make([n, d]))
            dhs.append(make([n, f1]))
            guard n > 0 else { continue }
            for r in partition.rowChunks(n) {
                phase1.append(.rows(i, r))
                maxChunk = max(maxChunk, r.count * f)
            }
            for t in ExpertPartition.pieces(f, partition.columnsPerTile) { phase1.append(.w2(i, t)) }
            phase1.append(.b2(i))
            for t in ExpertPartition.pieces(f1, partition.columnsPerTile) { phase2.append(.w1(i, t)) }
        }
        func cost(_ t: Task) -> Int {
            switch t {
            case .rows(let i, let r): return 3 * r.count * work[i].weights.hiddenDim
            case .w2(let i, let c), .w1(let i, let c): return work[i].rows * c.count
            case .b2(let i): return work[i].rows / 64
            }
        }
        let slots = max(1, threads)
        let buffers = scratch.prepare(slots: slots, count: maxChunk)
        let body: (Task, Int) -> Void = { task, slot in
            switch task {
            case .rows(let i, let r):
                let w = work[i].weights, d = w.modelDim, f = w.hiddenDim, f1 = w.activation.firstProjectionWidth(dFF: f)
                let r0 = r.lowerBound, n = r.count
                let dy = gradients[i].pointer + r0 * d, h = saved[i].preActivation.pointer + r0 * f1
                let dh = dhs[i].pointer + r0 * f1, da = buffers[slot]
                gemm(transB: true, m: n, n: f, k: d, a: dy, b: w.w2.value.pointer, c: da)
                FeedForward.activationBackward(dh: dh, da: da, h: h, rows: n, dFF: f, activation: w.activation)
                gemm(transB: true, m: n, n: d, k: f1, a: dh, b: w.w1.value.pointer, c: dxs[i].pointer + r0 * d)
            case .w2(let i, let c):
                let w = work[i].weights, d = w.modelDim, f = w.hiddenDim
                gemm(transA: true, m: c.count, n: d, k: work[i].rows,
                     a: saved[i].hidden.pointer + c.lowerBound, lda: f, b: gradients[i].pointer,
                     beta: 1, c: work[i].dw2 + c.lowerBound * d)
            case .b2(let i):
                let w = work[i].weights
                Kernels.addColumnSums(gradients[i].pointer, rows: work[i].rows, cols: w.modelDim, into: work[i].db2)
            case .w1(let i, let c):
                let w = work[i].weights, d = w.modelDim, f1 = w.activation.firstProjectionWidth(dFF: w.hiddenDim)
                let dh = dhs[i].pointer
                gemm(transA: true, m: d, n: c.count, k: work[i].rows,
                     a: saved[i].input.pointer, b: dh + c.lowerBound, ldb: f1,
                     beta: 1, c: work[i].dw1 + c.lowerBound, ldc: f1)
                let db1 = work[i].db1
                for r in 0..<work[i].rows {
                    let row = dh + r * f1
                    for j in c { db1[j] += row[j] }
                }
            }
        }
        runTasks(phase1, threads: threads, cost: cost, body)
        runTasks(phase2, threads: threads, cost: cost, body)
        return dxs
    }
}

#if canImport(Glibc)
import Glibc
#endif
