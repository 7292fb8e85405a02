import ThorTensor
import ThorExperts
import ThorWire

/// The experts as a follower coordinator (data-parallel rank ≥ 1, docs/data-parallel.md step 3)
/// sees them: the workers the leader placed them on, reached over this coordinator's own ROUTER.
/// It sends only Forward and Backward of its shard — to each expert's primary, or with active
/// replication to every replica of a training batch, exactly as the leader's `RemoteExpertBackend`
/// does — and leaves everything that settles, steps or changes the experts to the leader (those
/// calls throw here; the workers would refuse them with `NOT_LEADER` anyway). A worker lost
/// mid-step ends the follower's step with `expertsLost` (fault tolerance with several coordinators
/// is step 4).
public final class FollowerExpertBackend: ExpertBackend {
    public let spec: ExpertSpec
    public let coordinator: ClusterCoordinator
    /// The leader's placement (set before the first step).
    public var placement: Placement
    public var replication: ReplicationMode
    /// Deadline for each exchange in seconds (nil: learned from measured times).
    public var requestTimeout: Double?
    public var wireDType: WireDType = .f32
    public var shard: Shard {
        get { coordinator.shard }
        set { coordinator.shard = newValue }
    }

    public init(coordinator: ClusterCoordinator, spec: ExpertSpec, placement: Placement, replication: ReplicationMode) {
        self.coordinator = coordinator
        self.spec = spec
        self.placement = placement
        self.replication = replication
    }

    /// Waits up to `timeout` seconds until every placement worker registered with this coordinator and is alive.
    public func waitForPlacementWorkers(timeout: Double, check: () throws -> Void = {}) throws {
        let end = monotonicSeconds() + timeout
        while true {
            try check()
            try coordinator.poll(timeout: 0.05)
            let missing = placement.workers.filter { !coordinator.isAlive($0) }
            if missing.isEmpty { break }
            guard monotonicSeconds() < end else {
                throw ClusterError.timeout(operation: "registration with follower coordinator \(coordinator.endpoint)",
                                           workers: missing, seconds: timeout)
            }
        }
        for w in placement.workers { coordinator.acceptJoin(w) }
    }

    private func run(layer: Int, _ batches: [ExpertBatch], replicate: Bool, operation: String, phase: FaultPhase,
                     request: ([ExpertBatch]) -> WireMessage, unpack: (WireMessage) -> [ExpertBatch]?) throws -> [Tensor] {
        var order: [String] = [], members: [String: [Int]] = [:]
        for i in batches.indices {
            let k = ExpertKey(layer: layer, expert: batches[i].expert)
            guard let hosts = placement.hosts[k], !hosts.isEmpty else { throw ExpertBackendError.unknownExpert(k) }
            for w in replicate ? hosts : [hosts[0]] {
                if members[w] == nil { order.append(w) }
                members[w, default: []].append(i)
            }
        }
        let requests = order.map { w in (worker: w, message: request(members[w]!.map { batches[$0] })) }
        let outcomes = try coordinator.exchangeTolerant(requests, operation: operation, phase: phase, layer: layer,
                                                        timeout: requestTimeout, dtype: wireDType)
        var out = [Tensor?](repeating: nil, count: batches.count)
        for (q, o) in zip(requests, outcomes) {
            guard let reply = o.message else { continue }
            if case .error(let code, let message) = reply {
                throw ClusterError.remote(worker: q.worker, operation: operation, code: code, message: message)
            }
            let indices = members[q.worker]!
            guard let got = unpack(reply), got.count == indices.count else {
                throw ClusterError.unexpectedReply(worker: q.worker, operation: operation, detail: "expected \(indices.count) tensors, got \(reply.name)")
            }
            for (j, i) in indices.enumerated() {
                guard got[j].expert == batches[i].expert, got[j].tokens.shape == batches[i].tokens.shape else {
                    throw ClusterError.unexpectedReply(worker: q.worker, operation: operation,
                                                       detail: "tensor \(j) is for expert \(got[j].expert), expected \(batches[i].expert)")
                }
                if out[i] == nil { out[i] = got[j].tokens }
            }
        }
        let lost = out.indices.filter { out[$0] == nil }
        if !lost.isEmpty {
            throw ClusterError.expertsLost(keys: Set(lost.map { ExpertKey(layer: layer, expert: batches[$0].expert) }).sorted(),
                                           workers: coordinator.lost.keys.sorted(), step: coordinator.currentStep)
        }
        return out.map { $0! }
    }

    public func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        try run(layer: layer, batches, replicate: training && replication == .active, operation: "Forward layer \(layer)", phase: .forward,
                request: { .forward(layer: layer, training: training, batches: $0, replyDType: self.wireDType) },
                unpack: { if case .forwardReply(_, let o) = $0 { return o } else { return nil } })
    }

    public func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        try run(layer: layer, gradients, replicate: replication == .active, operation: "Backward layer \(layer)", phase: .backward,
                request: { .backward(layer: layer, gradients: $0, replyDType: self.wireDType) },
                unpack: { if case .backwardReply(_, let o) = $0 { return o } else { return nil } })
    }

    private func leaderOnly(_ what: String) -> ClusterError {
        .placement("\(what) is the leader coordinator's: a follower coordinator sends only Forward and Backward of its shard")
    }

    public func squaredGradientNorms() throws -> [ExpertKey: Double] { throw leaderOnly("GradNorm") }
    public func step(learningRate: Float, clipScale: Float, step: Int) throws { throw leaderOnly("Step") }
    public func zeroGradients() throws { throw leaderOnly("ZeroGradients") }
    public func exportState() throws -> [ExpertKey: [String: Tensor]] { throw leaderOnly("Export of every expert") }
    public func importState(_ state: [ExpertKey: [String: Tensor]]) throws { throw leaderOnly("Import") }
}
