import ThorTensor
import ThorExperts
import ThorWire

/// Experts on worker processes: the distributed `ExpertBackend`.
///
/// Each call sends ONE request per worker that has work (all its batches of
/// that layer), gathers the replies with a deadline and returns outputs in the
/// caller's order. With replicas in the placement, training forward/backward
/// batches also go to every replica (kept bit-identical; the primary's result
/// is used); inference goes to primaries only. Workers compute with the same `ExpertHost` code as
/// `InProcessExpertBackend`, so results are bit-identical (with f32 on the wire).
public final class RemoteExpertBackend: ExpertBackend {
    public let spec: ExpertSpec
    public let coordinator: ClusterCoordinator
    public let placement: Placement
    /// Deadline for each exchange (seconds).
    public var requestTimeout: Double
    /// Element type of tensors on the wire: `.f32` (exact) or `.bf16` (half the bytes, lossy).
    public var wireDType: WireDType = .f32

    /// Assigns each worker its experts (fresh weights from `spec.seed`) and waits for the Acks.
    public init(coordinator: ClusterCoordinator, spec: ExpertSpec, placement: Placement,
                requestTimeout: Double = 120) throws {
        self.coordinator = coordinator
        self.spec = spec
        self.placement = placement
        self.requestTimeout = requestTimeout
        for w in placement.workers where coordinator.registrations[w] == nil { throw ClusterError.unknownWorker(w) }
        let requests = placement.workers.map {
            (worker: $0, message: WireMessage.assign(Assignment(spec: spec, keys: placement.keys(on: $0))))
        }
        try expectAcks(try coordinator.exchange(requests, operation: "Assign", timeout: requestTimeout), requests.map(\.worker), "Assign")
    }

    /// Time and bytes spent in exchanges so far (encode / wait / decode split).
    public var counters: TransportCounters { coordinator.counters }
    public func resetCounters() { coordinator.counters = TransportCounters() }

    /// Groups batch indices by worker, in first-appearance order: each batch goes to
    /// its expert's primary, and with `replicate` also to every replica (training
    /// keeps replicas bit-identical by running them on the same batches).
    private func group(layer: Int, _ batches: [ExpertBatch], replicate: Bool) throws -> [(worker: String, indices: [Int])] {
        var order: [String] = [], members: [String: [Int]] = [:]
        for (i, b) in batches.enumerated() {
            let k = ExpertKey(layer: layer, expert: b.expert)
            guard let hosts = placement.hosts[k], !hosts.isEmpty else { throw ExpertBackendError.unknownExpert(k) }
            for w in replicate ? hosts : [hosts[0]] {
                if members[w] == nil { order.append(w) }
                members[w, default: []].append(i)
            }
        }
        return order.map { ($0, members[$0]!) }
    }

    /// Sends each worker its share and scatters the primaries' tensors back into request order.
    private func run(layer: Int, _ batches: [ExpertBatch], replicate: Bool, operation: String,
                     request: ([ExpertBatch]) -> WireMessage,
                     unpack: (WireMessage) -> [ExpertBatch]?) throws -> [Tensor] {
        let groups = try group(layer: layer, batches, replicate: replicate)
        let requests = groups.map { g in (worker: g.worker, message: request(g.indices.map { batches[$0] })) }
        let replies = try coordinator.exchange(requests, operation: operation, timeout: requestTimeout, dtype: wireDType)
        var out = [Tensor?](repeating: nil, count: batches.count)
        for (g, reply) in zip(groups, replies) {
            guard let got = unpack(reply), got.count == g.indices.count else {
                throw ClusterError.unexpectedReply(worker: g.worker, operation: operation,
                                                   detail: "expected \(g.indices.count) tensors, got \(reply.name)")
            }
            for (j, i) in g.indices.enumerated() {
                guard got[j].expert == batches[i].expert, got[j].tokens.shape == batches[i].tokens.shape else {
                    throw ClusterError.unexpectedReply(worker: g.worker, operation: operation,
                                                       detail: "tensor \(j) is for expert \(got[j].expert) \(got[j].tokens.shape), expected expert \(batches[i].expert) \(batches[i].tokens.shape)")
                }
                if placement.primary(ExpertKey(layer: layer, expert: batches[i].expert)) == g.worker { out[i] = got[j].tokens }
            }
        }
        return out.map { $0! }
    }

    public func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        try run(layer: layer, batches, replicate: training, operation: "Forward layer \(layer)",
                request: { .forward(layer: layer, training: training, batches: $0, replyDType: self.wireDType) },
                unpack: { if case .forwardReply(_, let o) = $0 { return o } else { return nil } })
    }

    public func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        try run(layer: layer, gradients, replicate: true, operation: "Backward layer \(layer)",
                request: { .backward(layer: layer, gradients: $0, replyDType: self.wireDType) },
                unpack: { if case .backwardReply(_, let o) = $0 { return o } else { return nil } })
    }

    private func fanOut(_ message: WireMessage, _ operation: String) throws -> [WireMessage] {
        try coordinator.exchange(placement.workers.map { (worker: $0, message: message) },
                                 operation: operation, timeout: requestTimeout)
    }

    /// Throws naming the first worker (of `workers`, in reply order) that did not answer with an Ack.
    private func expectAcks(_ replies: [WireMessage], _ workers: [String], _ op: String) throws {
        for (r, w) in zip(replies, workers) {
            guard case .ack = r else { throw ClusterError.unexpectedReply(worker: w, operation: op, detail: "got \(r.name), expected Ack") }
        }
    }

    public func squaredGradientNorms() throws -> [ExpertKey: Double] {
        let replies = try fanOut(.gradNormRequest, "GradNorm")
        var norms: [ExpertKey: Double] = [:]
        for (w, r) in zip(placement.workers, replies) {
            guard case .gradNormReport(let n) = r else {
                throw ClusterError.unexpectedReply(worker: w, operation: "GradNorm", detail: "got \(r.name)")
            }
            // Replicas hold the same gradients; the primary's copy counts.
            for (k, v) in n where placement.primary(k) == w { norms[k] = v }
        }
        return norms
    }

    public func step(learningRate: Float, clipScale: Float, step: Int) throws {
        let m = WireMessage.step(learningRate: learningRate, clipScale: clipScale, step: step)
        try expectAcks(try fanOut(m, "Step \(step)"), placement.workers, "Step \(step)")
    }

    public func zeroGradients() throws {
        try expectAcks(try fanOut(.zeroGradients, "ZeroGradients"), placement.workers, "ZeroGradients")
    }

    public func exportState() throws -> [ExpertKey: [String: Tensor]] {
        var requests: [(worker: String, message: WireMessage)] = []
        for w in placement.workers {
            let primaries = placement.keys(on: w).filter { placement.primary($0) == w }
            if !primaries.isEmpty { requests.append((worker: w, message: .exportRequest(keys: primaries))) }
        }
        let replies = try coordinator.exchange(requests, operation: "Export", timeout: requestTimeout)
        var state: [ExpertKey: [String: Tensor]] = [:]
        for (q, r) in zip(requests, replies) {
            guard case .expertStates(let s) = r else {
                throw ClusterError.unexpectedReply(worker: q.worker, operation: "Export", detail: "got \(r.name)")
            }
            state.merge(s) { a, _ in a }
        }
        return state
    }

    /// The state of the experts `worker` hosts (primary or replica), e.g. to check replicas agree.
    public func exportState(worker: String) throws -> [ExpertKey: [String: Tensor]] {
        let keys = placement.keys(on: worker)
        if keys.isEmpty { return [:] }
        let reply = try coordinator.exchange([(worker: worker, message: .exportRequest(keys: keys))],
                                             operation: "Export", timeout: requestTimeout)[0]
        guard case .expertStates(let s) = reply else {
            throw ClusterError.unexpectedReply(worker: worker, operation: "Export", detail: "got \(reply.name)")
        }
        return s
    }

    public func importState(_ state: [ExpertKey: [String: Tensor]]) throws {
        var perWorker: [String: [ExpertKey: [String: Tensor]]] = [:]
        for (k, tensors) in state {
            guard let hs = placement.hosts[k] else { throw ExpertBackendError.unknownExpert(k) }
            for h in hs { perWorker[h, default: [:]][k] = tensors }
        }
        let requests = placement.workers.compactMap { w in perWorker[w].map { (worker: w, message: WireMessage.importRequest($0)) } }
        try expectAcks(try coordinator.exchange(requests, operation: "Import", timeout: requestTimeout), requests.map(\.worker), "Import")
    }
}
