import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorWire
import ThorCluster
import ThorTraining

/// One configuration of `thor experiment scaling`.
struct ScalingConfiguration: Codable, Hashable, Sendable {
    var workers: Int, experts: Int, tokens: Int, width: Int
    var transport: String, wireDType: String, replicas: Int

    /// Fixed shape of every configuration: sentences of 32 positions, d_ff = 4d, 4 heads,
    /// 2 encoder MoE layers (THOR top-p, p = 0.5, 4 tasks, task level on the first).
    static let length = 32, heads = 4, moeLayers = 2, tasks = 4, threshold: Float = 0.5
    /// The transport that puts each worker on its own emulated node (docs/emulated-nodes.md).
    static let emulatedNodesTransport = "netns"

    /// A local cluster for this configuration: `netns` runs each worker in its own network
    /// namespace (tcp over veth links, removed at shutdown); else ipc or tcp on this host.
    /// Heartbeat intervals a worker may stay silent: 20 × 0.25 s, not the default 3. The sweep
    /// times steps, it does not test fault handling, and on an overloaded shared machine a worker
    /// process can go unscheduled for longer than 0.75 s.
    static let heartbeatLiveness = 20

    func makeCluster() throws -> LocalCluster {
        if transport == Self.emulatedNodesTransport {
            return try LocalCluster(workers: workers, transport: .tcp, threadsPerWorker: 1, heartbeatLiveness: Self.heartbeatLiveness,
                                    emulatedNodes: EmulatedNodes.Options(nodes: workers))
        }
        return try LocalCluster(workers: workers, transport: LocalCluster.Transport(rawValue: transport)!, threadsPerWorker: 1,
                                heartbeatLiveness: Self.heartbeatLiveness)
    }

    var hiddenDim: Int { 4 * width }
    var sentences: Int { max(1, tokens / Self.length) }
    /// Tokens actually in the batch (whole sentences).
    var batchTokens: Int { sentences * Self.length }
    var wireBytesPerElement: Int { wireDType == "bf16" ? 2 : 4 }

    /// Identifies the configuration in results.jsonl (resume skips keys already there).
    var key: String {
        "workers=\(workers) experts=\(experts) tokens=\(tokens) width=\(width) transport=\(transport) wire=\(wireDType) replicas=\(replicas)"
    }
    /// A short label for tables and plots.
    var label: String {
        var s = "W\(workers) N\(experts) n\(tokens) d\(width)"
        if transport != "ipc" { s += " " + transport }
        if wireDType != "f32" { s += " " + wireDType }
        if replicas > 1 { s += " R\(replicas)" }
        return s
    }

    var model: TransformerConfiguration {
        TransformerConfiguration(vocabularySize: 8, modelDim: width, hiddenDim: hiddenDim, heads: Self.heads,
                                 encoderLayers: Self.moeLayers, decoderLayers: 1, activation: .relu)
    }
    var routing: RoutingConfiguration {
        RoutingConfiguration(variant: .thorTopP, experts: experts, threshold: Self.threshold, moeEvery: 1, tasks: Self.tasks)
    }
}

/// Per-worker figures of one step: the worker's CPU seconds (from /proc) and its own decode,
/// queue, compute and encode seconds summed over the step's requests (from the timings on its
/// replies; nil when nothing read them).
struct WorkerPhaseSample: Codable, Sendable {
    var worker: String
    var cpuSeconds: Double
    var decode: Double?, queue: Double?, compute: Double?, encode: Double?

    /// Seconds the worker spent on the requests (decode + queue + compute + encode), if known.
    var busy: Double? {
        guard let d = decode, let q = queue, let c = compute, let e = encode else { return nil }
        return d + q + c + e
    }
}

/// Where per-worker step figures come from (the adapter the richer per-reply timings plug into).
protocol WorkerPhaseSource {
    /// Called just before a step.
    func begin()
    /// The figures of the step since `begin`.
    func end() -> [WorkerPhaseSample]
}

/// Worker CPU seconds from /proc/PID/stat (clock-tick resolution).
final class ProcessCPUWorkerPhases: WorkerPhaseSource {
    let workers: [(id: String, pid: Int32)]
    private var start: [Double] = []
    init(ids: [String], pids: [Int32]) { workers = Array(zip(ids, pids)).map { (id: $0.0, pid: $0.1) } }
    func begin() { start = workers.map { processCPUSeconds(pid: $0.pid) } }
    func end() -> [WorkerPhaseSample] {
        workers.enumerated().map { i, w in
            WorkerPhaseSample(worker: w.id, cpuSeconds: processCPUSeconds(pid: w.pid) - (i < start.count ? start[i] : 0))
        }
    }
}

/// The workers' own timings: deltas of the coordinator's `workerTotals` (summed from every
/// reply's `WorkerTimings`) between `begin` and `end`. CPU seconds are left 0 (the /proc
/// source measures them over longer windows).
final class CoordinatorWorkerPhases: WorkerPhaseSource {
    let coordinator: ClusterCoordinator
    let ids: [String]
    private var start: [String: WorkerTotals] = [:]
    init(coordinator: ClusterCoordinator, ids: [String]) { self.coordinator = coordinator; self.ids = ids }
    func begin() { start = coordinator.workerTotals }
    func end() -> [WorkerPhaseSample] {
        let now = coordinator.workerTotals
        return ids.map { id in
            let t = ((now[id] ?? WorkerTotals()) - (start[id] ?? WorkerTotals())).timings
            return WorkerPhaseSample(worker: id, cpuSeconds: 0, decode: t.decode, queue: t.queue, compute: t.compute, encode: t.encode)
        }
    }
}

/// An `ExpertBackend` wrapper recording the entry/exit time of the last call, the rows
/// sent per (layer, expert) by the last forward of each layer and, over a remote backend, the
/// busiest worker's own time in each expert exchange.
final class ScalingProbeBackend: ExpertBackend {
    let inner: ExpertBackend
    var spec: ExpertSpec { inner.spec }
    var shard: Shard { get { inner.shard } set { inner.shard = newValue } }
    private(set) var enter = 0.0, exit = 0.0
    /// Rows of the last forward per layer and expert.
    private(set) var rows: [Int: [Int: Int]] = [:]
    /// Sum over the expert exchanges (forward and backward calls) since the last reset of the
    /// busiest worker's decode + queue + compute + encode in that exchange (from the timings on
    /// its replies): the part of each exchange's wait the workers account for. Nil in process.
    var busiestPerExchange: Double?
    private let coordinator: ClusterCoordinator?
    init(_ inner: ExpertBackend) {
        self.inner = inner
        coordinator = (inner as? RemoteExpertBackend)?.coordinator
        busiestPerExchange = coordinator == nil ? nil : 0
    }

    /// Runs one exchange, adding its busiest worker's own time to `busiestPerExchange`.
    private func exchange(_ body: () throws -> [Tensor]) throws -> [Tensor] {
        let before = coordinator?.workerTotals
        enter = now(); defer { exit = now() }
        let out = try body()
        if let coordinator, let before {
            let busiest = coordinator.workerTotals.map { id, total -> Double in
                let t = (total - (before[id] ?? WorkerTotals())).timings
                return t.decode + t.queue + t.compute + t.encode
            }.max() ?? 0
            busiestPerExchange = (busiestPerExchange ?? 0) + busiest
        }
        return out
    }

    func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        rows[layer] = Dictionary(batches.map { ($0.expert, $0.tokens.rows) }, uniquingKeysWith: +)
        return try exchange { try inner.forward(layer: layer, batches: batches, training: training) }
    }
    func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        try exchange { try inner.backward(layer: layer, gradients: gradients) }
    }
    func squaredGradientNorms() throws -> [ExpertKey: Double] { try inner.squaredGradientNorms() }
    func step(learningRate: Float, clipScale: Float, step: Int) throws {
        try inner.step(learningRate: learningRate, clipScale: clipScale, step: step)
    }
    func zeroGradients() throws { try inner.zeroGradients() }
    func exportState() throws -> [ExpertKey: [String: Tensor]] { try inner.exportState() }
    func importState(_ state: [ExpertKey: [String: Tensor]]) throws { try inner.importState(state) }
}

/// One timed training step of the scaling model: self-attention → task level → 2 MoE layers,
/// backward in reverse, then the experts' gradient norms and Adam step.
struct ScalingStep {
    var total = 0.0
    var phases: [ScalingPhase: Double] = [:]
    var coordinatorCPU = 0.0
    var workers: [WorkerPhaseSample] = []
    var bytesSent = 0, bytesReceived = 0, requests = 0
    /// Kept assignments over both layers.
    var assignments = 0
    /// Per expert exchange, the busiest worker's own time, summed over the step's exchanges
    /// (nil in process).
    var busiestPerExchange: Double?
}

/// The scaling model's coordinator side with a backend (in process or remote).
final class ScalingHarness {
    let configuration: ScalingConfiguration
    let probe: ScalingProbeBackend
    let remote: RemoteExpertBackend?
    let stack: MoEStack
    let attention: MultiHeadAttention
    let x: Tensor, dy: Tensor, layout: TokenLayout, shape: AttentionKernel.Shape
    var rng = RandomGenerator(seed: 5)
    var stepCount = 0

    init(_ c: ScalingConfiguration, backend: ExpertBackend) throws {
        configuration = c
        probe = ScalingProbeBackend(backend)
        remote = backend as? RemoteExpertBackend
        stack = try MoEStack(model: c.model, routing: c.routing, losses: LossConfiguration(), backend: probe, seed: 1)
        var g = RandomGenerator(seed: 3)
        attention = MultiHeadAttention(name: "attention", dim: c.width, heads: ScalingConfiguration.heads, rng: &g)
        let n = c.batchTokens
        x = Tensor(shape: [n, c.width]); dy = Tensor(shape: [n, c.width])
        var r = RandomGenerator(seed: 7)
        r.fillNormal(x.pointer, count: x.count, std: 1)
        r.fillNormal(dy.pointer, count: dy.count, std: 0.01)
        layout = TokenLayout(side: .encoder, batchSize: c.sentences, length: ScalingConfiguration.length,
                             mask: [Float](repeating: 1, count: n), taskLabels: (0..<c.sentences).map { $0 % ScalingConfiguration.tasks })
        shape = AttentionKernel.Shape(batch: c.sentences, queryLength: ScalingConfiguration.length,
                                      keyLength: ScalingConfiguration.length, dim: c.width, heads: ScalingConfiguration.heads, causal: false)
    }

    static func keys(_ c: ScalingConfiguration) -> [ExpertKey] {
        MoEStack.expertKeys(model: c.model, routing: c.routing).filter { $0.layer < ScalingConfiguration.moeLayers }
    }

    /// One step, timed by phase. `source` is ended after the experts' forward and backward
    /// exchanges, before the optimizer, so its figures cover the same requests as `wait`.
    func step(workers source: WorkerPhaseSource? = nil) throws -> ScalingStep {
        var s = ScalingStep()
        var p: [ScalingPhase: Double] = Dictionary(uniqueKeysWithValues: ScalingPhase.allCases.map { ($0, 0.0) })
        var backendSeconds = 0.0
        let before = remote?.counters ?? TransportCounters()
        if probe.busiestPerExchange != nil { probe.busiestPerExchange = 0 }
        source?.begin()
        let c0 = processCPUSeconds()
        let t0 = now()
        // Forward.
        var t = now()
        var h = attention.forward(query: x, keyValue: nil, shape: shape, keyMask: nil, dropout: 0, training: true, rng: &rng)
        p[.attention]! += now() - t
        t = now()
        var l = layout
        if let tl = stack.taskLevel { l.taskRepresentation = try tl.forward(h, layout: layout, training: true) }
        p[.routing]! += now() - t
        let moe = Array(stack.layers.prefix(ScalingConfiguration.moeLayers))
        for layer in moe {
            t = now()
            h = try layer.forward(h, layout: l, training: true)
            let e = now()
            p[.routing]! += probe.enter - t; p[.combine]! += e - probe.exit; backendSeconds += probe.exit - probe.enter
            s.assignments += layer.lastDecision?.keptAssignments ?? 0
        }
        // Backward.
        var g = dy
        var dr: Tensor? = nil
        for layer in moe.reversed() {
            t = now()
            let grads = try layer.backward(g)
            let e = now()
            p[.combine]! += probe.enter - t; p[.routing]! += e - probe.exit; backendSeconds += probe.exit - probe.enter
            g = grads.input
            if let r = grads.taskRepresentation {
                if let acc = dr { for i in 0..<acc.count { acc.pointer[i] += r.pointer[i] } } else { dr = r }
            }
        }
        t = now()
        if let tl = stack.taskLevel, let dr { try tl.backward(representationGradient: dr, into: g) }
        p[.routing]! += now() - t
        t = now()
        blackHole(attention.backward(g))
        p[.attention]! += now() - t
        let mid = remote?.counters ?? TransportCounters()
        s.workers = source?.end() ?? []
        s.busiestPerExchange = probe.busiestPerExchange
        p[.encode] = mid.encodeSeconds - before.encodeSeconds
        p[.wait] = mid.waitSeconds - before.waitSeconds
        p[.decode] = mid.decodeSeconds - before.decodeSeconds
        p[.other] = max(0, backendSeconds - p[.encode]! - p[.wait]! - p[.decode]!)
        if remote == nil { p[.wait] = backendSeconds; p[.other] = 0 }   // in process: the experts' compute
        // Optimizer: norms and the Adam step on the experts.
        t = now()
        stepCount += 1
        blackHole(try probe.squaredGradientNorms())
        try probe.step(learningRate: 1e-5, clipScale: 1, step: stepCount)
        p[.optimizer] = now() - t
        s.total = now() - t0
        s.coordinatorCPU = processCPUSeconds() - c0
        let after = remote?.counters ?? TransportCounters()
        s.bytesSent = after.bytesSent - before.bytesSent
        s.bytesReceived = after.bytesReceived - before.bytesReceived
        s.requests = after.requests - before.requests
        s.phases = p
        return s
    }
}
