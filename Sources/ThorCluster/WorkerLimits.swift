import ThorTensor
import ThorExperts
import ThorWire
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one expert-worker process agrees to hold. Requests are checked against
/// these limits before anything is allocated: a request that does not fit gets an
/// `Error{TOO_LARGE}` reply naming the size and the limit, and the worker keeps serving.
public struct WorkerLimits: Sendable, Equatable {
    /// Bytes the worker may use for expert weights, gradients, Adam moments and the
    /// activations of one request (default: the machine's physical memory).
    public var memoryBudgetBytes: Int
    /// Elements one tensor may have, received or built (default 2³¹ − 1: BLAS indexes with 32-bit ints).
    public var maxTensorElements: Int

    public init(memoryBudgetBytes: Int = WorkerLimits.physicalMemoryBytes(),
                maxTensorElements: Int = Int(Int32.max)) {
        self.memoryBudgetBytes = memoryBudgetBytes
        self.maxTensorElements = maxTensorElements
    }

    /// The machine's physical memory (sysconf), or 1 TiB when it cannot be read.
    public static func physicalMemoryBytes() -> Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, size > 0 else { return 1 << 40 }
        let (b, o) = pages.multipliedReportingOverflow(by: size)
        return o ? Int.max : b
    }

    /// Memory the system can still hand out (`MemAvailable` of /proc/meminfo), or physical memory.
    public static func availableMemoryBytes() -> Int {
        if let f = fopen("/proc/meminfo", "r") {
            defer { fclose(f) }
            var line = [CChar](repeating: 0, count: 256)
            while fgets(&line, Int32(line.count), f) != nil {
                let s = line.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
                if s.hasPrefix("MemAvailable:") {
                    let kb = s.split(separator: " ").compactMap { Int($0) }.first ?? 0
                    if kb > 0 { return kb * 1024 }
                }
            }
        }
        return physicalMemoryBytes()
    }

    /// Checks an `Assign` before any expert is built: every expert matrix within the
    /// element limit, and the experts' weights, gradients and Adam moments within the budget,
    /// with the C − 1 per-shard gradient copies a step of `shards` = C micro-batch shards may
    /// allocate (docs/data-parallel.md, "Per-shard worker state"; C as last seen by the worker).
    public func check(_ a: Assignment, shards: Int = 1) throws {
        let s = a.spec
        let f1 = s.activation.firstProjectionWidth(dFF: s.hiddenDim)
        for (name, rows, cols) in [("w1", s.modelDim, f1), ("w2", s.hiddenDim, s.modelDim)] {
            let (n, o) = rows.multipliedReportingOverflow(by: cols)
            guard !o, n <= maxTensorElements else {
                throw tooLarge("Assign: expert \(name) [\(rows), \(cols)] has \(o ? "more than \(Int.max)" : String(n)) elements; "
                               + "this worker's limit is \(maxTensorElements) elements per tensor")
            }
        }
        let perExpert = WorkerLimits.expertBytes(s)
        let copies = max(0, shards - 1)
        let perShard = WorkerLimits.shardGradientBytes(s).multipliedReportingOverflow(by: copies)
        let each = perExpert.addingReportingOverflow(perShard.partialValue)
        let (total, o) = each.partialValue.multipliedReportingOverflow(by: a.keys.count)
        guard !o, !each.overflow, !perShard.overflow, total <= memoryBudgetBytes else {
            let shardNote = copies == 0 ? "" : " and \(copies) per-shard gradient cop\(copies == 1 ? "y" : "ies") "
                + "(\(WorkerLimits.shardGradientBytes(s)) bytes each, for steps of \(shards) micro-batch shards)"
            throw tooLarge("Assign: \(a.keys.count) experts of \(perExpert) bytes each (d=\(s.modelDim), d_ff=\(s.hiddenDim), "
                           + "weights + gradients + Adam moments)\(shardNote) need "
                           + "\(o || each.overflow || perShard.overflow ? "more than \(Int.max)" : String(total)) bytes; "
                           + "this worker's memory budget is \(memoryBudgetBytes) bytes")
        }
    }

    /// Checks a forward or backward request against the element limit and, with the
    /// hosted experts' memory and their per-shard gradient buffers (`shardBuffers` allocated,
    /// `newShardBuffers` more that this request of `shard` would allocate), against the budget
    /// (outputs and kept activations per row).
    public func check(_ batches: [ExpertBatch], spec s: ExpertSpec, hostedExperts: Int,
                      shardBuffers: Int = 0, newShardBuffers: Int = 0, shard: Shard? = nil, what: String) throws {
        let f1 = s.activation.firstProjectionWidth(dFF: s.hiddenDim)
        let perRow = 4 * (2 * s.modelDim + f1 + s.hiddenDim)
        var rows = 0
        for b in batches {
            guard b.tokens.count <= maxTensorElements else {
                throw tooLarge("\(what): expert \(b.expert)'s tensor \(b.tokens.shape) has \(b.tokens.count) elements; "
                               + "this worker's limit is \(maxTensorElements) elements per tensor")
            }
            let (n, o) = b.tokens.rows.multipliedReportingOverflow(by: f1)
            guard !o, n <= maxTensorElements else {
                throw tooLarge("\(what): expert \(b.expert)'s \(b.tokens.rows) rows need a hidden tensor [\(b.tokens.rows), \(f1)]; "
                               + "this worker's limit is \(maxTensorElements) elements per tensor")
            }
            rows += b.tokens.rows
        }
        let experts = WorkerLimits.expertBytes(s).multipliedReportingOverflow(by: hostedExperts)
        let activations = rows.multipliedReportingOverflow(by: perRow)
        let buffers = WorkerLimits.shardGradientBytes(s).multipliedReportingOverflow(by: shardBuffers + newShardBuffers)
        let (held, o1) = experts.partialValue.addingReportingOverflow(buffers.partialValue)
        if newShardBuffers > 0 {
            guard !experts.overflow, !buffers.overflow, !o1, held <= memoryBudgetBytes else {
                let need = buffers.overflow || o1 || experts.overflow ? "more than \(Int.max)" : String(held)
                throw tooLarge("\(what) of \(shard.map { "\($0)" } ?? "a shard"): \(newShardBuffers) new per-shard gradient "
                               + "buffer\(newShardBuffers == 1 ? "" : "s") of \(WorkerLimits.shardGradientBytes(s)) bytes each, besides "
                               + "\(shardBuffers) allocated and \(experts.partialValue) bytes of experts, need \(need) bytes; "
                               + "this worker's memory budget is \(memoryBudgetBytes) bytes")
            }
        }
        let (total, o) = held.addingReportingOverflow(activations.partialValue)
        guard !experts.overflow, !activations.overflow, !buffers.overflow, !o1, !o, total <= memoryBudgetBytes else {
            let shardNote = shardBuffers + newShardBuffers == 0 ? "" : " and \(buffers.partialValue) bytes of per-shard gradient buffers"
            throw tooLarge("\(what): \(rows) rows need \(activations.partialValue) bytes of activations besides "
                           + "\(experts.partialValue) bytes of experts\(shardNote); this worker's memory budget is \(memoryBudgetBytes) bytes")
        }
    }

    /// Checks every tensor of an import against the element limit.
    public func check(_ state: [ExpertKey: [String: Tensor]]) throws {
        for (k, tensors) in state {
            for (name, t) in tensors where t.count > maxTensorElements {
                throw tooLarge("Import: \(k) \(name) \(t.shape) has \(t.count) elements; "
                               + "this worker's limit is \(maxTensorElements) elements per tensor")
            }
        }
    }

    /// Bytes of one expert as `Expert` allocates it: w1 [d, f1], b1 [f1], w2 [d_ff, d], b2 [d],
    /// each with value, gradient and two Adam moments (Float32). Saturates at `Int.max`.
    public static func expertBytes(_ s: ExpertSpec) -> Int {
        let f1 = s.activation.firstProjectionWidth(dFF: s.hiddenDim)
        let a = s.modelDim.multipliedReportingOverflow(by: f1)
        let b = s.hiddenDim.multipliedReportingOverflow(by: s.modelDim)
        guard !a.overflow, !b.overflow else { return .max }
        let (p, o1) = (a.partialValue + f1 + s.modelDim).addingReportingOverflow(b.partialValue)
        let (bytes, o2) = p.multipliedReportingOverflow(by: 16)
        return o1 || o2 ? .max : bytes
    }

    /// Bytes of one expert's gradient buffer for one shard > 0: its parameters once, Float32
    /// (a quarter of `expertBytes`). Saturates at `Int.max`.
    public static func shardGradientBytes(_ s: ExpertSpec) -> Int {
        let b = expertBytes(s)
        return b == .max ? .max : b / 4
    }

    private func tooLarge(_ m: String) -> WorkerRequestError { WorkerRequestError(code: .tooLarge, message: m) }
}
