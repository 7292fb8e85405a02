import Foundation

/// The analytical cost model of one THOR-MoE training step on a single coordinator and
/// W expert workers (docs/scaling.md). Each phase's time is a fitted multiple of a
/// "feature": the phase's time as this machine's measured component rates predict it
/// (GEMM rate per core, codec rate, link latency and bandwidth, routing cost per token,
/// attention rate), computed from the configuration's shape and routing statistics. With every
/// coefficient 1 the model is the pure micro-benchmark prediction; `fit` scales each phase
/// to what sweeps measured (non-negative least squares per phase).
public enum ScalingPhase: String, CaseIterable, Codable, CodingKeyRepresentable, Sendable {
    /// Self-attention forward + backward on the coordinator.
    case attention
    /// Task level, gate, router, selection, gather and their backward (coordinator).
    case routing
    /// Weighted sum of expert outputs and its backward (coordinator).
    case combine
    /// Packing requests (coordinator).
    case encode
    /// Waiting for replies: the busiest worker's compute, latency, transfer, worker codec.
    case wait
    /// Unpacking replies (coordinator).
    case decode
    /// Expert gradient norms and the Adam step on every worker (two round trips).
    case optimizer
    /// Bookkeeping in the distributed backend outside the counters (grouping, checks, scatter).
    case other
}

/// One link between coordinator and workers.
public struct LinkModel: Codable, Sendable, Equatable {
    /// One-way latency of a small message, seconds.
    public var latency: Double
    /// Bytes per second of large messages.
    public var bandwidth: Double
    public init(latency: Double, bandwidth: Double) { self.latency = latency; self.bandwidth = bandwidth }

    /// Parses "100gbit,5us" (units: gbit, mbit, gbyte/gb, mbyte/mb per second; s, ms, us, ns).
    public static func parse(_ text: String) throws -> LinkModel {
        let parts = text.lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2 else { throw ScalingModelError.badValue("link '\(text)': expected BANDWIDTH,LATENCY such as 100gbit,5us") }
        func number(_ s: String, _ units: [(String, Double)]) throws -> Double {
            for (u, scale) in units where s.hasSuffix(u) {
                if let v = Double(s.dropLast(u.count)), v > 0, v.isFinite { return v * scale }
            }
            throw ScalingModelError.badValue("link '\(text)': cannot read '\(s)' (units: \(units.map(\.0).joined(separator: ", ")))")
        }
        let bw = try number(parts[0], [("gbit", 1e9 / 8), ("mbit", 1e6 / 8), ("gbyte", 1e9), ("mbyte", 1e6), ("gb", 1e9), ("mb", 1e6)])
        let lat = try number(parts[1], [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1)])
        return LinkModel(latency: lat, bandwidth: bw)
    }
}

/// Component rates measured on one machine (`thor experiment scaling` measures and stores them).
public struct ComponentRates: Codable, Sendable, Equatable {
    /// Cores of the machine the measurements ran on.
    public var cores: Int
    /// Expert FFN forward + backward flop/s on one core, by model width ("64": rate).
    public var expertFlopsPerCore: [String: Double]
    /// Self-attention forward + backward flop/s on one core, by model width.
    public var attentionFlopsPerCore: [String: Double]
    /// Coordinator routing (task level, gate, router, selection, gather + backward) seconds per
    /// token and MoE layer, by "d=64,N=8".
    public var routingSecondsPerToken: [String: Double]
    /// Combine (weighted sum + backward) seconds per kept token-expert assignment, by width.
    public var combineSecondsPerAssignment: [String: Double]
    /// WireCodec encode and decode bytes per second (f32 tensors).
    public var encodeBytesPerSecond: Double
    public var decodeBytesPerSecond: Double
    /// Adam: parameters updated per second on one core.
    public var adamParametersPerSecond: Double
    /// Measured links on this machine ("ipc", "tcp").
    public var links: [String: LinkModel]
    /// Coordinator seconds to encode and send one request over each measured link (the socket
    /// path: WireCodec header packing + the ZeroMQ send call of a multipart message, best case).
    /// Nil in rates measured before it existed (then 0).
    public var sendSecondsPerMessage: [String: Double]?

    public init(cores: Int, expertFlopsPerCore: [String: Double] = [:], attentionFlopsPerCore: [String: Double] = [:],
                routingSecondsPerToken: [String: Double] = [:], combineSecondsPerAssignment: [String: Double] = [:],
                encodeBytesPerSecond: Double, decodeBytesPerSecond: Double, adamParametersPerSecond: Double,
                links: [String: LinkModel], sendSecondsPerMessage: [String: Double]? = nil) {
        self.cores = cores; self.expertFlopsPerCore = expertFlopsPerCore; self.attentionFlopsPerCore = attentionFlopsPerCore
        self.routingSecondsPerToken = routingSecondsPerToken; self.combineSecondsPerAssignment = combineSecondsPerAssignment
        self.encodeBytesPerSecond = encodeBytesPerSecond; self.decodeBytesPerSecond = decodeBytesPerSecond
        self.adamParametersPerSecond = adamParametersPerSecond; self.links = links
        self.sendSecondsPerMessage = sendSecondsPerMessage
    }

    public static func routingKey(modelDim: Int, experts: Int) -> String { "d=\(modelDim),N=\(experts)" }

    func rate(_ table: [String: Double], _ key: String, _ what: String) throws -> Double {
        guard let r = table[key], r > 0 else { throw ScalingModelError.missingRate("\(what) at \(key) was not measured") }
        return r
    }
}

public enum ScalingModelError: Error, CustomStringConvertible, Equatable {
    case badValue(String), missingRate(String), notEnoughData(String)
    public var description: String {
        switch self {
        case .badValue(let s): return s
        case .missingRate(let s): return "cost model: \(s)"
        case .notEnoughData(let s): return "cost model: \(s)"
        }
    }
}

/// What one step does: the configuration's shape and the routing statistics the model needs.
public struct ScalingWorkload: Codable, Sendable, Equatable {
    /// Tokens per batch n and positions per sentence L.
    public var tokens: Int, length: Int
    /// Model width d, expert hidden width d_ff, attention heads.
    public var modelDim: Int, hiddenDim: Int
    /// Experts per MoE layer N, MoE layers M, tasks T.
    public var experts: Int, moeLayers: Int
    /// Expert workers W and replicas R of every expert.
    public var workers: Int, replicas: Int
    /// Nodes the workers spread over (1 here) and cores per node for the workers.
    public var nodes: Int, coresPerNode: Int
    /// Bytes per element on the wire (4: f32, 2: bf16).
    public var wireBytesPerElement: Int
    /// Kept token-expert assignments per token (mean over the MoE layers).
    public var expertsPerToken: Double
    /// Rows (token copies) the busiest worker computes over the step's MoE layers, over the mean
    /// worker's (1 = perfectly balanced).
    public var imbalance: Double

    public init(tokens: Int, length: Int, modelDim: Int, hiddenDim: Int, experts: Int, moeLayers: Int, workers: Int,
                replicas: Int = 1, nodes: Int = 1, coresPerNode: Int, wireBytesPerElement: Int = 4,
                expertsPerToken: Double, imbalance: Double) {
        self.tokens = tokens; self.length = length; self.modelDim = modelDim; self.hiddenDim = hiddenDim
        self.experts = experts; self.moeLayers = moeLayers; self.workers = workers; self.replicas = replicas
        self.nodes = nodes; self.coresPerNode = coresPerNode; self.wireBytesPerElement = wireBytesPerElement
        self.expertsPerToken = expertsPerToken; self.imbalance = imbalance
    }

    /// Token-expert assignments per step over all MoE layers: M·n·e.
    public var assignments: Double { Double(moeLayers * tokens) * expertsPerToken }
    /// Tensor bytes on the wire per step: each assignment's row goes out and back in the forward
    /// (2), its gradient out and ∂L/∂x back in the backward (2): 4·M·n·e·d·b.
    public var wireBytes: Double { 4 * assignments * Double(modelDim * wireBytesPerElement) }
    /// Request/reply exchanges per step: forward and backward of each MoE layer, norms, step.
    public var exchanges: Int { 2 * moeLayers + 2 }
    /// Workers hosting experts: each exchange sends one request to each.
    public var hosts: Int { min(workers, experts * replicas) }
    /// Requests per step: each exchange addresses every worker (at most one per expert host).
    public var requests: Int { exchanges * hosts }
    /// Requests of the experts' forward and backward exchanges (the optimizer's two are apart).
    public var expertRequests: Int { 2 * moeLayers * hosts }
    /// Flops of one expert row forward + backward: 6 GEMMs of 2·d·d_ff.
    public var flopsPerRow: Double { 12 * Double(modelDim * hiddenDim) }
    /// Self-attention forward + backward flops: projections 8·n·d², scores and context 4·n·L·d,
    /// backward twice the forward.
    public var attentionFlops: Double { 3 * (8 * Double(tokens) * Double(modelDim * modelDim) + 4 * Double(tokens * length * modelDim)) }
    /// Bytes of the gradients shipped to replicas per step (shipped-gradient replication): every
    /// expert's primary sends its f32 gradients to the coordinator, which sends them to each of
    /// its R − 1 replicas: 4·M·N·P·R bytes for R > 1 (P parameters per expert), 0 for R = 1.
    public var replicaGradientBytes: Double {
        guard replicas > 1 else { return 0 }
        let perExpert = Double(2 * modelDim * hiddenDim + modelDim + hiddenDim)
        return 4 * Double(moeLayers * experts) * perExpert * Double(replicas)
    }
    /// Expert parameters the busiest worker updates (replicas included).
    /// Parameters of one expert: 2·d·d_ff + d + d_ff.
    public var parametersPerExpert: Double { Double(2 * modelDim * hiddenDim + modelDim + hiddenDim) }
    public var parametersOnBusiestWorker: Double {
        let perExpert = Double(2 * modelDim * hiddenDim + modelDim + hiddenDim)
        let keys = Double(moeLayers * experts * replicas)
        return (keys / Double(workers)).rounded(.up) * perExpert
    }
}

/// The model: coefficients per phase over the features `features(_:rates:)` computes.
public struct ScalingCostModel: Codable, Sendable, Equatable {
    /// Per phase, one coefficient per feature (see `featureNames`).
    public var coefficients: [ScalingPhase: [Double]]
    public var rates: ComponentRates

    /// The features of each phase, in coefficient order.
    public static let featureNames: [ScalingPhase: [String]] = [
        .attention: ["attention_flops / attention_rate"],
        .routing: ["M · n · routing_seconds_per_token"],
        .combine: ["assignments · combine_seconds_per_assignment"],
        .encode: ["expert requests · send_seconds_per_message + bytes_sent / encode_rate"],
        .wait: ["busiest worker's rows · flops_per_row / expert_rate",
                "all rows · flops_per_row / expert_rate / cores of the workers' nodes",
                "expert exchanges · 2 · latency + bytes / bandwidth + busiest worker codec",
                "expert requests · latency"],
        .decode: ["bytes_received / decode_rate"],
        .optimizer: ["2 · 2 · latency + busiest worker Adam + replica gradients shipped",
                     "all experts' Adam / cores of the workers' nodes"],
        .other: ["requests"],
    ]

    /// The pure micro-benchmark prediction: every phase's first feature at coefficient 1, the
    /// other features (shared-core compute, per-request latencies) and `other` at 0.
    public init(rates: ComponentRates) {
        self.rates = rates
        coefficients = Dictionary(uniqueKeysWithValues: ScalingPhase.allCases.map { p in
            (p, Self.featureNames[p]!.indices.map { i in
                p == .other ? 0 : p == .wait ? (i == 0 || i == Self.computeFeatures ? 1 : 0) : (i == 0 ? 1 : 0)
            })
        })
    }

    public init(coefficients: [ScalingPhase: [Double]], rates: ComponentRates) {
        self.coefficients = coefficients; self.rates = rates
    }

    /// The link of a workload: the named measured link, or an explicit one.
    public enum Link: Sendable, Equatable {
        case measured(String)
        case given(LinkModel)
    }

    /// Each phase's features (seconds, except `other`: a count) for `w` over `link`.
    /// Workers on node 0 share the coordinator's node and reach it over this machine's `ipc`
    /// when the workload spans several nodes; the rest cross `link`. Expert compute has two
    /// features, fitted together: the busiest worker's rows at one core's rate (what limits an
    /// exchange when every worker has a core to itself), and all rows over all cores of the
    /// workers' nodes (what limits it when the workers, or other work on the machines, outnumber
    /// the cores). The optimizer likewise: the busiest worker's Adam, and all experts' Adam over
    /// the cores.
    public func features(_ w: ScalingWorkload, link: Link) throws -> [ScalingPhase: [Double]] {
        let r = rates, d = String(w.modelDim)
        let expertRate = try r.rate(r.expertFlopsPerCore, d, "expert FFN rate")
        let attentionRate = try r.rate(r.attentionFlopsPerCore, d, "attention rate")
        let routing = try r.rate(r.routingSecondsPerToken, ComponentRates.routingKey(modelDim: w.modelDim, experts: w.experts), "routing cost")
        let combine = try r.rate(r.combineSecondsPerAssignment, d, "combine cost")
        let remote: LinkModel
        switch link {
        case .measured(let name):
            guard let l = r.links[name] else { throw ScalingModelError.missingRate("link \(name) was not measured") }
            remote = l
        case .given(let l): remote = l
        }
        // Bytes split between the coordinator's own node (ipc) and the link.
        let local = w.nodes > 1 ? (r.links["ipc"] ?? remote) : remote
        let localShare = w.nodes > 1 ? 1 / Double(w.nodes) : 1
        let bytes = w.wireBytes
        let transfer = bytes * localShare / local.bandwidth + bytes * (1 - localShare) / remote.bandwidth
        let latency = w.nodes > 1 ? max(local.latency, remote.latency) : remote.latency
        let half = bytes / 2
        let meanRows = w.assignments / Double(w.workers)
        let busiestRows = meanRows * w.imbalance
        let cores = Double(max(1, w.coresPerNode) * max(1, w.nodes))
        let busiestCompute = busiestRows * w.flopsPerRow / expertRate
        let sharedCompute = w.assignments / cores * w.flopsPerRow / expertRate
        let busiestBytes = bytes / Double(w.workers) * w.imbalance
        let workerCodec = busiestBytes / 2 * (1 / r.encodeBytesPerSecond + 1 / r.decodeBytesPerSecond)
        let wire = Double(2 * w.moeLayers) * 2 * latency + transfer + workerCodec
        let adam = w.parametersOnBusiestWorker / r.adamParametersPerSecond
        let allAdam = Double(w.moeLayers * w.experts * w.replicas) * w.parametersPerExpert / r.adamParametersPerSecond / cores
        // The coordinator's send path: its own host's socket (the measured link, or tcp for a
        // given link: the send call does not depend on the wire beyond it).
        let sendName: String
        if case .measured(let name) = link { sendName = name } else { sendName = "tcp" }
        let send = r.sendSecondsPerMessage?[sendName] ?? r.sendSecondsPerMessage?["ipc"] ?? 0
        let replicaBytes = w.replicaGradientBytes
        let shipping = replicaBytes / remote.bandwidth + replicaBytes / 2 * (1 / r.encodeBytesPerSecond + 1 / r.decodeBytesPerSecond)
        return [
            .attention: [w.attentionFlops / attentionRate],
            .routing: [Double(w.moeLayers * w.tokens) * routing],
            .combine: [w.assignments * combine],
            .encode: [Double(w.expertRequests) * send + half / r.encodeBytesPerSecond],
            .wait: [busiestCompute, sharedCompute, wire, Double(w.expertRequests) * latency],
            .decode: [half / r.decodeBytesPerSecond],
            .optimizer: [2 * 2 * latency + adam + shipping, allAdam],
            .other: [Double(w.requests)],
        ]
    }

    /// Predicted seconds per phase. A model whose coefficients do not match this version's
    /// features (a cost-model.json from an older version) is refused, naming the phase.
    public func predict(_ w: ScalingWorkload, link: Link) throws -> [ScalingPhase: Double] {
        let f = try features(w, link: link)
        var out: [ScalingPhase: Double] = [:]
        for p in ScalingPhase.allCases {
            let c = coefficients[p] ?? [], x = f[p] ?? []
            guard c.count == x.count else {
                throw ScalingModelError.badValue("cost model: \(c.count) coefficient(s) for \(p.rawValue), this version has \(x.count) features (a model from an older version: run `thor experiment scaling` again to refit it)")
            }
            out[p] = zip(c, x).reduce(0) { $0 + $1.0 * $1.1 }
        }
        return out
    }

    /// Predicted step seconds (sum of the phases).
    public func predictStep(_ w: ScalingWorkload, link: Link) throws -> Double {
        try predict(w, link: link).values.reduce(0, +)
    }

    /// One measured configuration: its workload, link and measured seconds per phase.
    public struct Observation: Sendable {
        public var workload: ScalingWorkload
        public var link: Link
        public var phases: [ScalingPhase: Double]
        /// The workers' own time in the expert exchanges: per exchange the busiest worker's
        /// decode, queue, compute and encode (from the timings on its replies), summed. When
        /// every observation has it, `wait`'s compute coefficients are fitted on it (at most
        /// encode + wait) and the wire and encode coefficients together on the rest of encode +
        /// wait; otherwise encode alone and `wait` jointly on the whole `wait`.
        public var waitCompute: Double?
        public init(workload: ScalingWorkload, link: Link, phases: [ScalingPhase: Double], waitCompute: Double? = nil) {
            self.workload = workload; self.link = link; self.phases = phases; self.waitCompute = waitCompute
        }
        public var step: Double { phases.values.reduce(0, +) }
    }

    /// `wait`'s first features are the workers' compute, the rest the wire.
    public static let computeFeatures = 2

    /// Fits every phase's coefficients to `observations` by non-negative least squares on the
    /// relative residuals (each observation weighs the same whatever its size). Needs at least
    /// 2 observations; with fewer observations than a phase has features, the non-negative
    /// least squares keeps the best subset of them (the others 0).
    public static func fit(_ observations: [Observation], rates: ComponentRates) throws -> ScalingCostModel {
        var model = ScalingCostModel(rates: rates)
        let features = try observations.map { try model.features($0.workload, link: $0.link) }
        guard observations.count >= 2 else {
            throw ScalingModelError.notEnoughData("\(observations.count) observation(s): the fit needs at least 2 configurations")
        }
        let split = observations.allSatisfy({ $0.waitCompute != nil })
        for p in ScalingPhase.allCases {
            if split && p == .encode { continue }  // fitted with wait's wire part, below
            if split && p == .wait {
                // The workers' own time measured: the compute coefficients on the workers' part of
                // encode + wait, the wire and send-path coefficients (with encode's) on the rest,
                // same weights. Encode and wait are taken together because the coordinator's
                // sends overlap the workers' compute: a woken worker starts while the coordinator
                // is still sending (and on a busy machine takes its core), so where encode ends
                // and wait begins is the scheduler's choice, not the workload's.
                var comp: [[Double]] = [], compY: [Double] = [], rest: [[Double]] = [], restY: [Double] = []
                for (o, f) in zip(observations, features) {
                    let wgt = 1 / max(o.step, 1e-12)
                    let exchange = (o.phases[.wait] ?? 0) + (o.phases[.encode] ?? 0)
                    let c = min(o.waitCompute!, exchange)
                    let x = f[.wait]!
                    comp.append(x.prefix(computeFeatures).map { $0 * wgt }); compY.append(c * wgt)
                    rest.append((x.dropFirst(computeFeatures) + f[.encode]!).map { $0 * wgt }); restY.append((exchange - c) * wgt)
                }
                let wire = nonNegativeLeastSquares(rest, restY)
                let n = featureNames[.wait]!.count - computeFeatures
                model.coefficients[.wait] = nonNegativeLeastSquares(comp, compY) + wire.prefix(n)
                model.coefficients[.encode] = Array(wire.dropFirst(n))
                continue
            }
            var rows: [[Double]] = [], ys: [Double] = []
            for (o, f) in zip(observations, features) {
                let y = o.phases[p] ?? 0
                // Weight 1/step: relative to the step, so small and large configurations count alike.
                let wgt = 1 / max(o.step, 1e-12)
                rows.append(f[p]!.map { $0 * wgt }); ys.append(y * wgt)
            }
            model.coefficients[p] = nonNegativeLeastSquares(rows, ys)
        }
        return model
    }
}

/// min ‖A·θ − y‖² over θ ≥ 0 for a few columns: the best unconstrained solution on every
/// subset of columns (the rest 0) that stays non-negative (exhaustive active set, 2^k subsets).
public func nonNegativeLeastSquares(_ a: [[Double]], _ y: [Double]) -> [Double] {
    let k = a.first?.count ?? 0
    var best = [Double](repeating: 0, count: k), bestError = y.reduce(0) { $0 + $1 * $1 }
    for mask in 1..<(1 << k) {
        let cols = (0..<k).filter { mask & (1 << $0) != 0 }
        // Normal equations on the chosen columns.
        let m = cols.count
        var g = [[Double]](repeating: [Double](repeating: 0, count: m + 1), count: m)
        for (row, yi) in zip(a, y) {
            for i in 0..<m {
                for j in 0..<m { g[i][j] += row[cols[i]] * row[cols[j]] }
                g[i][m] += row[cols[i]] * yi
            }
        }
        guard let sol = solve(g), sol.allSatisfy({ $0 >= 0 && $0.isFinite }) else { continue }
        var theta = [Double](repeating: 0, count: k)
        for (i, c) in cols.enumerated() { theta[c] = sol[i] }
        let err = zip(a, y).reduce(0.0) { acc, p in
            let r = zip(p.0, theta).reduce(0) { $0 + $1.0 * $1.1 } - p.1
            return acc + r * r
        }
        if err < bestError { bestError = err; best = theta }
    }
    return best
}

/// Gaussian elimination with partial pivoting on an augmented m × (m+1) matrix; nil if singular.
private func solve(_ matrix: [[Double]]) -> [Double]? {
    var g = matrix
    let m = g.count
    let scale = g.flatMap { $0.prefix(m) }.map(abs).max() ?? 0
    guard scale > 0 else { return nil }
    for c in 0..<m {
        let p = (c..<m).max { abs(g[$0][c]) < abs(g[$1][c]) }!
        guard abs(g[p][c]) > 1e-12 * scale else { return nil }
        g.swapAt(c, p)
        for r in 0..<m where r != c {
            let f = g[r][c] / g[c][c]
            for j in c...m { g[r][j] -= f * g[c][j] }
        }
    }
    return (0..<m).map { g[$0][m] / g[$0][$0] }
}

/// The predicted breakdown grouped by what limits it.
public struct ScalingBottleneck: Sendable, Equatable {
    public var name: String, seconds: Double, share: Double, explanation: String

    /// The largest of: the single coordinator's work (attention, routing, combine, codec,
    /// bookkeeping), the expert compute on the busiest worker, the network (latency and
    /// transfer), the optimizer round trips.
    public static func of(phases: [ScalingPhase: Double], features: [ScalingPhase: [Double]],
                          coefficients: [ScalingPhase: [Double]]) -> ScalingBottleneck {
        let total = max(phases.values.reduce(0, +), 1e-30)
        let c = coefficients[.wait] ?? [], x = features[.wait] ?? []
        let waitCompute = zip(c, x).prefix(ScalingCostModel.computeFeatures).reduce(0) { $0 + $1.0 * $1.1 }
        let waitWire = (phases[.wait] ?? 0) - waitCompute
        let groups: [(String, Double, String)] = [
            ("coordinator", ["attention", "routing", "combine", "encode", "decode", "other"]
                .compactMap { ScalingPhase(rawValue: $0) }.reduce(0) { $0 + (phases[$1] ?? 0) },
             "the single coordinator's attention, routing and codec grow with the tokens per batch, not with the workers: data-parallel coordinators would split them"),
            ("expert compute", waitCompute, "the busiest worker's expert GEMMs: more workers or better balance shorten it"),
            ("network", waitWire, "latency of the per-layer exchanges and the coordinator link's bandwidth: fewer, larger exchanges or a faster link"),
            ("optimizer", phases[.optimizer] ?? 0, "the gradient-norm and Adam round trips and the busiest worker's Adam update"),
        ]
        let top = groups.max { $0.1 < $1.1 }!
        return ScalingBottleneck(name: top.0, seconds: top.1, share: top.1 / total, explanation: top.2)
    }
}
