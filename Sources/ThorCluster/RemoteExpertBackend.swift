import ThorTensor
import ThorExperts
import ThorWire

/// Experts on worker processes: the distributed `ExpertBackend`, with replicas and fail-over.
///
/// Each call sends ONE request per worker that has work (all its batches of
/// that layer), gathers the replies and returns outputs in the caller's order.
/// Active replication: training forward/backward batches and every optimizer step go
/// to every live replica of an expert, so replicas stay bit-identical by determinism;
/// the output of the first replica that answers is used (they are the same bits).
/// Inference goes to one live replica (the next one if it is lost).
///
/// A worker declared dead (missed heartbeats, exited, unreachable, deadline) is dropped
/// from the placement and its experts' next replica takes over, within the same call:
/// nothing of the step is lost or redone. Only when an expert has no live replica left
/// does a call throw `ClusterError.expertsLost`; the caller then rolls the step back
/// (`zeroGradients`) and applies its policy (fail, wait, restore). Workers that register
/// later (restarted, new, spares) receive the experts short of replicas, with their
/// weights and Adam moments copied from a live replica, at the next step boundary.
public final class RemoteExpertBackend: ExpertBackend {
    public let spec: ExpertSpec
    public let coordinator: ClusterCoordinator
    /// Where each expert lives now (changes on fail-over and rejoin).
    public private(set) var placement: Placement
    /// The micro-batch shard of the following Forward and Backward requests (sent as `Envelope.shard`).
    public var shard: Shard {
        get { coordinator.shard }
        set { coordinator.shard = newValue }
    }
    /// Deadline for each exchange in seconds (nil: learned from measured times, `DeadlineEstimator`).
    public var requestTimeout: Double?
    /// Element type of tensors on the wire: `.f32` (exact) or `.bf16` (half the bytes, lossy).
    public var wireDType: WireDType = .f32
    /// Replicas every expert should have: workers that join get the experts short of it.
    public let replicas: Int
    /// How replicas stay identical (see `ReplicationMode`).
    public var replication: ReplicationMode = .shippedGradients
    /// Gradients to apply on each replica at the next step (shipped-gradient replication).
    private var shipped: [String: [ExpertKey: [String: Tensor]]] = [:]
    /// A primary was lost during the step in progress (shipped-gradient replication): the step must be redone.
    private var abortedBy: String?
    /// Training work of the step in progress has been sent.
    private var stepStarted = false
    /// Fail-over, rejoin and loss events (one line each; see `ClusterEvent`).
    public var onEvent: ((ClusterEvent) -> Void)?
    /// The last optimizer step every live replica acknowledged.
    public private(set) var committedStep = 0
    /// Experts with no live replica (after `ClusterError.expertsLost`).
    public private(set) var missing: Set<ExpertKey> = []
    /// Losses whose recovery completes with the next committed step.
    private var recovering: [ClusterEvent] = []
    private var placementEpoch: UInt64 = 1

    /// Assigns each worker its experts (fresh weights from `spec.seed`) and waits for the Acks.
    public init(coordinator: ClusterCoordinator, spec: ExpertSpec, placement: Placement,
                requestTimeout: Double? = nil) throws {
        self.coordinator = coordinator
        self.spec = spec
        self.placement = placement
        self.requestTimeout = requestTimeout
        replicas = placement.hosts.values.map(\.count).max() ?? 1
        for w in placement.workers where coordinator.registrations[w] == nil { throw ClusterError.unknownWorker(w) }
        let requests = placement.workers.map {
            (worker: $0, message: WireMessage.assign(Assignment(spec: spec, keys: placement.keys(on: $0), placementEpoch: placementEpoch)))
        }
        try expectAcks(try coordinator.exchange(requests, operation: "Assign", timeout: requestTimeout ?? 120), requests.map(\.worker), "Assign")
        for w in placement.workers { coordinator.acceptJoin(w); noteAssigned(w) }
        coordinator.currentStep = committedStep + 1
    }

    /// Time and bytes spent in exchanges so far (encode / wait / decode split).
    public var counters: TransportCounters { coordinator.counters }
    public func resetCounters() { coordinator.counters = TransportCounters() }

    // MARK: liveness bookkeeping

    /// Drops workers the coordinator declared dead from the placement; promotes the next
    /// replica of each of their experts; records experts left with no replica.
    private func absorbLosses() {
        let dead = placement.workers.filter { coordinator.lost[$0] != nil || restarted($0) }
        if dead.isEmpty { return }
        var hosts = placement.hosts
        for w in dead {
            // A worker declared dead whose new process registered before this ran is no longer in
            // `lost`, but it holds none of its experts: the same loss, named by its restart.
            let loss = coordinator.lost[w] ?? WorkerLoss(worker: w, reason: "restarted as a new process holding none of its experts",
                                                          silentSeconds: 0, declaredAt: monotonicSeconds())
            var moved: [ExpertKey: String] = [:]
            var gone: [ExpertKey] = []
            for k in hosts.keys.sorted() where hosts[k]!.contains(w) {
                let wasPrimary = hosts[k]!.first == w
                hosts[k]!.removeAll { $0 == w }
                if let next = hosts[k]!.first { if wasPrimary { moved[k] = next } } else { gone.append(k); hosts[k] = nil }
            }
            missing.formUnion(gone)
            if replication == .shippedGradients, !moved.isEmpty || !gone.isEmpty, abortedBy == nil { abortedBy = w }
            let event = ClusterEvent(kind: .workerLost, step: coordinator.currentStep, worker: w, reason: loss.reason,
                                     moved: moved, lostExperts: gone, detectionSeconds: loss.silentSeconds,
                                     detectedAt: loss.declaredAt)
            if gone.isEmpty { recovering.append(event) } else { onEvent?(event) }
        }
        placement = try! Placement(hosts: hosts, workers: placement.workers.filter { !dead.contains($0) })
        placementEpoch += 1
    }

    /// The incarnation (process) of each placement worker that acknowledged its Assign.
    private var assignedIncarnation: [String: UInt64] = [:]

    private func noteAssigned(_ worker: String) {
        assignedIncarnation[worker] = coordinator.registrations[worker]?.incarnation
    }

    /// Whether `worker` registered again as another process since it acknowledged its experts.
    private func restarted(_ worker: String) -> Bool {
        guard let assigned = assignedIncarnation[worker], let now = coordinator.registrations[worker]?.incarnation else { return false }
        return assigned != now
    }

    /// Throws `stepAborted` when a primary was lost in the step in progress (after `expertsLost`, which wins).
    private func requireIntactStep() throws {
        try requireHosts(Array(missing))
        if let w = abortedBy {
            for i in recovering.indices where recovering[i].worker == w { recovering[i].stepRedone = true }
            throw ClusterError.stepAborted(worker: w, step: coordinator.currentStep)
        }
    }

    /// Throws `expertsLost` for the experts among `keys` that have no live replica.
    private func requireHosts(_ keys: [ExpertKey], dead: [String] = []) throws {
        if keys.contains(where: { missing.contains($0) }) {
            throw ClusterError.expertsLost(keys: missing.sorted(), workers: dead.isEmpty ? lostWorkerNames : dead,
                                           step: coordinator.currentStep)
        }
    }

    private var lostWorkerNames: [String] { coordinator.lost.keys.sorted() }

    /// Exchanges `requests`, resending (up to twice) a request the worker refused as
    /// malformed (a frame corrupted on the way: the worker changed nothing). Error replies
    /// of any other kind throw; losses come back as `.lost` after the placement absorbed them.
    private func tolerant(_ requests: [(worker: String, message: WireMessage)], operation: String,
                          phase: FaultPhase, layer: Int? = nil, dtype: WireDType = .f32) throws -> [ExchangeOutcome] {
        var outcomes = try coordinator.exchangeTolerant(requests, operation: operation, phase: phase, layer: layer,
                                                        timeout: requestTimeout, dtype: dtype)
        for _ in 0..<2 {
            let retry = outcomes.indices.filter { if case .error(.malformed, _)? = outcomes[$0].message { return true } else { return false } }
            if retry.isEmpty { break }
            let again = try coordinator.exchangeTolerant(retry.map { requests[$0] }, operation: operation, phase: phase, layer: layer,
                                                         timeout: requestTimeout, dtype: dtype)
            for (j, i) in retry.enumerated() { outcomes[i] = again[j] }
        }
        for (i, o) in outcomes.enumerated() {
            if case .error(let code, let message)? = o.message {
                throw ClusterError.remote(worker: requests[i].worker, operation: operation, code: code, message: message)
            }
        }
        absorbLosses()
        return outcomes
    }

    // MARK: compute

    /// Groups batch indices by worker, in first-appearance order: each batch goes to its
    /// expert's first live host, and with `replicate` to every live host.
    private func group(layer: Int, _ batches: [ExpertBatch], indices: [Int], replicate: Bool) throws -> [(worker: String, indices: [Int])] {
        var order: [String] = [], members: [String: [Int]] = [:]
        try requireHosts(indices.map { ExpertKey(layer: layer, expert: batches[$0].expert) })
        for i in indices {
            let k = ExpertKey(layer: layer, expert: batches[i].expert)
            guard let hosts = placement.hosts[k], !hosts.isEmpty else { throw ExpertBackendError.unknownExpert(k) }
            for w in replicate ? hosts : [hosts[0]] {
                if members[w] == nil { order.append(w) }
                members[w, default: []].append(i)
            }
        }
        return order.map { ($0, members[$0]!) }
    }

    /// Sends each worker its share and scatters the first answering replica's tensors back
    /// into request order; batches whose every host was lost are retried on the remaining
    /// hosts when `retryable` (inference), else reported as lost experts.
    private func run(layer: Int, _ batches: [ExpertBatch], replicate: Bool, retryable: Bool, operation: String, phase: FaultPhase,
                     request: ([ExpertBatch]) -> WireMessage,
                     unpack: (WireMessage) -> [ExpertBatch]?) throws -> [Tensor] {
        var out = [Tensor?](repeating: nil, count: batches.count)
        var todo = Array(batches.indices)
        while !todo.isEmpty {
            let groups = try group(layer: layer, batches, indices: todo, replicate: replicate)
            let requests = groups.map { g in (worker: g.worker, message: request(g.indices.map { batches[$0] })) }
            let outcomes = try tolerant(requests, operation: operation, phase: phase, layer: layer, dtype: wireDType)
            for (g, outcome) in zip(groups, outcomes) {
                guard let reply = outcome.message else { continue }
                guard let got = unpack(reply), got.count == g.indices.count else {
                    throw ClusterError.unexpectedReply(worker: g.worker, operation: operation,
                                                       detail: "expected \(g.indices.count) tensors, got \(reply.name)")
                }
                for (j, i) in g.indices.enumerated() {
                    guard got[j].expert == batches[i].expert, got[j].tokens.shape == batches[i].tokens.shape else {
                        throw ClusterError.unexpectedReply(worker: g.worker, operation: operation,
                                                           detail: "tensor \(j) is for expert \(got[j].expert) \(got[j].tokens.shape), expected expert \(batches[i].expert) \(batches[i].tokens.shape)")
                    }
                    if out[i] == nil { out[i] = got[j].tokens }
                }
            }
            todo = todo.filter { out[$0] == nil }
            if !todo.isEmpty && !retryable {
                // Every host that computed these batches was lost.
                let keys = Set(todo.map { ExpertKey(layer: layer, expert: batches[$0].expert) })
                missing.formUnion(keys.filter { placement.hosts[$0] == nil })
                try requireIntactStep()
                throw ClusterError.expertsLost(keys: keys.sorted(), workers: lostWorkerNames, step: coordinator.currentStep)
            }
        }
        return out.map { $0! }
    }

    public func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        if training {
            // A primary lost between steps took nothing of this step with it.
            if !stepStarted { abortedBy = nil; stepStarted = true }
            try requireIntactStep()
        }
        return try run(layer: layer, batches, replicate: training && replication == .active, retryable: !training, operation: "Forward layer \(layer)", phase: .forward,
                request: { .forward(layer: layer, training: training, batches: $0, replyDType: self.wireDType) },
                unpack: { if case .forwardReply(_, let o) = $0 { return o } else { return nil } })
    }

    public func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        try requireIntactStep()
        return try run(layer: layer, gradients, replicate: replication == .active, retryable: false, operation: "Backward layer \(layer)", phase: .backward,
                request: { .backward(layer: layer, gradients: $0, replyDType: self.wireDType) },
                unpack: { if case .backwardReply(_, let o) = $0 { return o } else { return nil } })
    }

    private func fanOut(_ message: WireMessage, _ operation: String, _ phase: FaultPhase) throws -> [(String, ExchangeOutcome)] {
        let workers = placement.workers
        let outcomes = try tolerant(workers.map { (worker: $0, message: message) }, operation: operation, phase: phase)
        return Array(zip(workers, outcomes))
    }

    /// Throws naming the first worker (of `workers`, in reply order) that did not answer with an Ack.
    private func expectAcks(_ replies: [WireMessage], _ workers: [String], _ op: String) throws {
        for (r, w) in zip(replies, workers) {
            guard case .ack = r else { throw ClusterError.unexpectedReply(worker: w, operation: op, detail: "got \(r.name), expected Ack") }
        }
    }

    private func expectAcks(_ outcomes: [(String, ExchangeOutcome)], _ op: String) throws {
        for (w, o) in outcomes {
            if let r = o.message, case .ack = r {} else if let r = o.message {
                throw ClusterError.unexpectedReply(worker: w, operation: op, detail: "got \(r.name), expected Ack")
            }
        }
    }

    /// Per-expert squared gradient norms, from each expert's primary. With shipped-gradient
    /// replication the primaries also send the gradients of their replicated experts, kept
    /// for `step` to hand to the replicas.
    public func squaredGradientNorms() throws -> [ExpertKey: Double] {
        try requireIntactStep()
        shipped.removeAll()
        var requests: [(worker: String, message: WireMessage)] = []
        for w in placement.workers {
            requests.append((worker: w, message: .gradNormRequest))
            if replication == .shippedGradients {
                let replicated = placement.keys(on: w).filter { placement.primary($0) == w && placement.hosts[$0]!.count > 1 }
                if !replicated.isEmpty { requests.append((worker: w, message: .gradientsRequest(keys: replicated))) }
            }
        }
        let outcomes = try tolerant(requests, operation: "GradNorm", phase: .gradNorm)
        try requireIntactStep()
        var norms: [ExpertKey: Double] = [:]
        for (q, o) in zip(requests, outcomes) {
            guard let r = o.message else { continue }
            switch r {
            case .gradNormReport(let n):
                // Replicas hold the same gradients (active replication) or none (shipped): the primary's counts.
                for (k, v) in n where placement.primary(k) == q.worker || (replication == .active && norms[k] == nil && placement.hosts[k]?.contains(q.worker) == true) {
                    norms[k] = v
                }
            case .expertStates(let grads):
                for (k, g) in grads { for h in placement.hosts[k]!.dropFirst() { shipped[h, default: [:]][k] = g } }
            default:
                throw ClusterError.unexpectedReply(worker: q.worker, operation: "GradNorm", detail: "got \(r.name)")
            }
        }
        let absent = placement.keys.filter { norms[$0] == nil }
        missing.formUnion(absent)
        try requireHosts(absent)
        return norms
    }

    /// The commit point of a step: Adam on every live replica. Completes the recovery of
    /// earlier losses (their events are emitted now) and takes in workers that joined.
    public func step(learningRate: Float, clipScale: Float, step: Int) throws {
        try requireIntactStep()
        let m = WireMessage.step(learningRate: learningRate, clipScale: clipScale, step: step)
        // Replicas first take their primaries' gradients (same connection, so in order), then step.
        var requests: [(worker: String, message: WireMessage)] = []
        for w in placement.workers {
            if let g = shipped[w], !g.isEmpty { requests.append((worker: w, message: .applyGradients(g))) }
            requests.append((worker: w, message: m))
        }
        let outcomes = try tolerant(requests, operation: "Step \(step)", phase: .step)
        try expectAcks(Array(zip(requests.map(\.worker), outcomes)), "Step \(step)")
        // A primary lost now already shipped its gradients: its replicas committed the step.
        try requireHosts(Array(missing))
        shipped.removeAll()
        abortedBy = nil
        stepStarted = false
        committedStep = step
        let now = monotonicSeconds()
        for var e in recovering {
            e.recoverySeconds = now - e.detectedAt
            onEvent?(e)
        }
        recovering.removeAll()
        coordinator.currentStep = step + 1
        // The step is committed: a failure while taking in joined workers must not look like a
        // failed commit. Losses it met are absorbed and surface in the next step.
        do { try integrateJoins() } catch {}
    }

    /// Rolls back an uncommitted step: every live replica drops its gradients and kept activations.
    public func zeroGradients() throws {
        shipped.removeAll()
        abortedBy = nil
        stepStarted = false
        let outcomes = try fanOut(.zeroGradients, "ZeroGradients", .other)
        try expectAcks(outcomes, "ZeroGradients")
    }

    // MARK: state

    /// Each expert's state from one live replica.
    public func exportState() throws -> [ExpertKey: [String: Tensor]] {
        try requireHosts(Array(missing))
        return try exportState(placement.keys)
    }

    private func exportState(_ keys: [ExpertKey]) throws -> [ExpertKey: [String: Tensor]] {
        var state: [ExpertKey: [String: Tensor]] = [:]
        var todo = keys
        while !todo.isEmpty {
            try requireHosts(todo)
            var perWorker: [String: [ExpertKey]] = [:], order: [String] = []
            for k in todo {
                guard let h = placement.hosts[k]?.first else { throw ExpertBackendError.unknownExpert(k) }
                if perWorker[h] == nil { order.append(h) }
                perWorker[h, default: []].append(k)
            }
            let requests = order.map { (worker: $0, message: WireMessage.exportRequest(keys: perWorker[$0]!)) }
            let outcomes = try tolerant(requests, operation: "Export", phase: .export)
            for (q, o) in zip(requests, outcomes) {
                guard let r = o.message else { continue }
                guard case .expertStates(let s) = r else {
                    throw ClusterError.unexpectedReply(worker: q.worker, operation: "Export", detail: "got \(r.name)")
                }
                state.merge(s) { a, _ in a }
            }
            todo = todo.filter { state[$0] == nil }
        }
        return state
    }

    /// The state of the experts `worker` hosts (primary or replica), e.g. to check replicas agree.
    public func exportState(worker: String) throws -> [ExpertKey: [String: Tensor]] {
        let keys = placement.keys(on: worker)
        if keys.isEmpty { return [:] }
        let reply = try coordinator.exchange([(worker: worker, message: .exportRequest(keys: keys))],
                                             operation: "Export", timeout: requestTimeout ?? 120)[0]
        guard case .expertStates(let s) = reply else {
            throw ClusterError.unexpectedReply(worker: worker, operation: "Export", detail: "got \(reply.name)")
        }
        return s
    }

    public func importState(_ state: [ExpertKey: [String: Tensor]]) throws {
        var perWorker: [String: [ExpertKey: [String: Tensor]]] = [:]
        for (k, tensors) in state {
            guard let hs = placement.hosts[k] else {
                if missing.contains(k) { continue }
                throw ExpertBackendError.unknownExpert(k)
            }
            for h in hs { perWorker[h, default: [:]][k] = tensors }
        }
        let requests = placement.workers.compactMap { w in perWorker[w].map { (worker: w, message: WireMessage.importRequest($0)) } }
        let outcomes = try tolerant(requests, operation: "Import", phase: .import)
        try expectAcks(Array(zip(requests.map(\.worker), outcomes)), "Import")
        try requireHosts(Array(state.keys))
    }

    // MARK: rejoin, re-replication, recovery

    /// Workers registered and alive but hosting nothing (spares, or joined and not yet needed).
    public var spares: [String] {
        coordinator.liveWorkerIDs.filter { !placement.workers.contains($0) && coordinator.isAlive($0) }
    }

    /// At a step boundary: every worker that joined (new, restarted or back) receives the
    /// experts short of `replicas` copies — Assign, then their weights and Adam moments
    /// from a live replica — and serves from the next step. A worker that comes back
    /// (same incarnation, same session) still holding lost experts at the committed step
    /// brings them back.
    public func integrateJoins() throws {
        let candidates = coordinator.joined.filter { coordinator.isAlive($0) && !placement.workers.contains($0) }
        for w in candidates {
            let started = monotonicSeconds()
            guard let reg = coordinator.registrations[w] else { continue }
            var hosts = placement.hosts
            // Lost experts it still holds, at the committed step, from this session.
            let revived = reg.session == coordinator.session && reg.committedStep == committedStep
                ? missing.filter { reg.hosted.contains($0) }.sorted() : []
            // Experts short of replicas, fewest copies first; spread so no worker takes more than its share.
            let share = (placement.keys.count + missing.count) * replicas / max(1, placement.workers.count + 1) + 1
            let short = hosts.keys.filter { hosts[$0]!.count < replicas && !hosts[$0]!.contains(w) }
                .sorted { (hosts[$0]!.count, $0) < (hosts[$1]!.count, $1) }
            let copies = Array(short.prefix(max(0, share - revived.count)))
            if revived.isEmpty && copies.isEmpty { continue }  // a spare: nothing needs it yet
            coordinator.acceptJoin(w)
            let state = try exportState(copies)
            let keys = (revived + copies).sorted()
            placementEpoch += 1
            let assign = try coordinator.exchangeTolerant([(worker: w, message: .assign(Assignment(spec: spec, keys: keys, placementEpoch: placementEpoch,
                                                                                                    keepExisting: !revived.isEmpty)))],
                                                          operation: "Assign", phase: .assign, timeout: requestTimeout)
            guard case .ack? = assign[0].message else { continue }
            var requests: [(worker: String, message: WireMessage)] = []
            if !state.isEmpty { requests.append((worker: w, message: .importRequest(state))) }
            if !revived.isEmpty { requests.append((worker: w, message: .zeroGradients)) }
            var ok = true
            for r in requests {
                guard case .ack? = try coordinator.exchangeTolerant([r], operation: r.message.name, phase: .import, timeout: requestTimeout)[0].message else {
                    ok = false; break
                }
            }
            if !ok { continue }
            for k in copies { hosts[k]!.append(w) }
            for k in revived { hosts[k] = [w]; missing.remove(k) }
            noteAssigned(w)
            placement = try Placement(hosts: hosts, workers: placement.workers + [w])
            onEvent?(ClusterEvent(kind: .rejoined, step: committedStep, worker: w,
                                  reason: revived.isEmpty ? "incarnation \(String(reg.incarnation, radix: 16)) received \(copies.count) experts"
                                                          : "came back holding \(revived.count) lost experts",
                                  moved: Dictionary(uniqueKeysWithValues: keys.map { ($0, w) }), lostExperts: [],
                                  detectionSeconds: nil, detectedAt: started, recoverySeconds: monotonicSeconds() - started))
        }
    }

    /// Waits up to `timeout` seconds for workers holding the missing experts to come back
    /// (`--on-expert-loss wait`); true when none is missing any more. The step in progress
    /// must be rolled back and redone afterwards.
    public func waitForMissingExperts(timeout: Double, check: () throws -> Void = {}) throws -> Bool {
        let end = monotonicSeconds() + timeout
        while !missing.isEmpty && monotonicSeconds() < end {
            try check()
            try coordinator.poll(timeout: 0.1)
            try integrateJoins()
        }
        return missing.isEmpty
    }

    /// Places the missing experts (fresh) on live workers so that `importState` can fill them
    /// from a checkpoint (`--on-expert-loss restore`): every expert gets up to `replicas`
    /// hosts among the live workers and joined spares. When no worker is left at all (every
    /// one missed its heartbeats at once, e.g. on an overloaded machine, or all crashed), waits
    /// up to `joinTimeout` seconds for one to register (back) before giving up.
    public func replaceMissingExperts(joinTimeout: Double = 0) throws {
        try integrateJoins()
        let end = monotonicSeconds() + joinTimeout
        while placement.workers.isEmpty && spares.isEmpty && monotonicSeconds() < end {
            try coordinator.poll(timeout: 0.1)
            try integrateJoins()
        }
        var workers = placement.workers
        for w in spares where !workers.contains(w) { workers.append(w); coordinator.acceptJoin(w) }
        guard !workers.isEmpty else {
            throw ClusterError.placement("no live worker left to host \(missing.count) experts"
                + (joinTimeout > 0 ? " (none registered within \(Int(joinTimeout)) s)" : ""))
        }
        var hosts = placement.hosts
        var load = Dictionary(uniqueKeysWithValues: workers.map { w in (w, hosts.values.filter { $0.contains(w) }.count) })
        for k in missing.sorted() {
            let chosen = workers.sorted { (load[$0]!, $0) < (load[$1]!, $1) }.prefix(min(replicas, workers.count))
            hosts[k] = Array(chosen)
            for w in chosen { load[w]! += 1 }
        }
        let next = try Placement(hosts: hosts, workers: workers)
        placementEpoch += 1
        let requests = workers.map { (worker: $0, message: WireMessage.assign(Assignment(spec: spec, keys: next.keys(on: $0),
                                                                                           placementEpoch: placementEpoch, keepExisting: true))) }
        let outcomes = try tolerant(requests, operation: "Assign", phase: .assign)
        try expectAcks(Array(zip(requests.map(\.worker), outcomes)), "Assign")
        for w in workers where coordinator.lost[w] == nil { noteAssigned(w) }
        placement = try Placement(hosts: next.hosts.mapValues { $0.filter { coordinator.lost[$0] == nil } }.filter { !$0.value.isEmpty },
                                  workers: workers.filter { coordinator.lost[$0] == nil })
        missing = Set(next.keys.filter { placement.hosts[$0] == nil })
        if !missing.isEmpty {
            throw ClusterError.expertsLost(keys: missing.sorted(), workers: lostWorkerNames, step: coordinator.currentStep)
        }
    }

    /// Sets the step counter after a restore from a checkpoint at `step`.
    public func resetCommittedStep(_ step: Int) {
        committedStep = step
        shipped.removeAll()
        abortedBy = nil
        coordinator.currentStep = step + 1
        recovering.removeAll()
    }
}

/// How the replicas of an expert stay bit-identical.
public enum ReplicationMode: String, Sendable, CaseIterable {
    /// The primary computes every batch; at the step it ships its experts' gradients and the
    /// replicas apply the same optimizer step from them (bit-identical: same gradient bits,
    /// same Adam). Losing a primary mid-step rolls the step back and redoes it.
    case shippedGradients = "shipped-gradients"
    /// Every replica computes every batch; losing a worker mid-step costs nothing (the
    /// survivors hold the step's work), but the experts' compute is done R times.
    case active
}

/// A fail-over, rejoin or loss, as one line for stderr and one record for metrics.jsonl.
public struct ClusterEvent: Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// A worker was declared dead; its experts' replicas took over (emitted once the next step committed).
        case workerLost = "worker-lost"
        /// A worker joined and received experts (state transfer) or brought lost ones back.
        case rejoined = "rejoin"
        /// A local worker process was restarted by the supervisor, or given up on.
        case restarted = "restart"
        case gaveUp = "gave-up"
        /// The run reloaded its last checkpoint (`--on-expert-loss restore`).
        case restored = "restore"
    }
    public var kind: Kind
    /// The step in progress when it happened.
    public var step: Int
    public var worker: String
    public var reason: String
    /// Experts whose serving replica changed: key → the worker serving it now.
    public var moved: [ExpertKey: String]
    /// Experts left with no replica.
    public var lostExperts: [ExpertKey]
    /// Seconds from the worker's last sign of life to it being declared dead.
    public var detectionSeconds: Double?
    /// Monotonic time of detection (or of the start of a rejoin).
    public var detectedAt: Double
    /// Seconds from detection to the first step committed after it (or the rejoin's duration).
    public var recoverySeconds: Double?
    /// The step in progress was rolled back and redone (a primary lost with shipped-gradient replication).
    public var stepRedone = false

    public init(kind: Kind, step: Int, worker: String, reason: String, moved: [ExpertKey: String] = [:], lostExperts: [ExpertKey] = [],
                detectionSeconds: Double? = nil, detectedAt: Double = monotonicSeconds(), recoverySeconds: Double? = nil) {
        self.kind = kind; self.step = step; self.worker = worker; self.reason = reason; self.moved = moved
        self.lostExperts = lostExperts; self.detectionSeconds = detectionSeconds; self.detectedAt = detectedAt
        self.recoverySeconds = recoverySeconds
    }

    public var description: String {
        var s = "event \(kind.rawValue): worker \(worker) at step \(step): \(reason)"
        if !moved.isEmpty {
            s += "; experts moved: " + moved.keys.sorted().map { "\($0)→\(moved[$0]!)" }.joined(separator: " ")
        }
        if !lostExperts.isEmpty { s += "; no replica left of " + lostExperts.map(\.description).joined(separator: " ") }
        if stepRedone { s += "; step \(step) rolled back and redone" }
        if let d = detectionSeconds { s += "; detected in \(decimal(d)) s" }
        if let r = recoverySeconds { s += (kind == .rejoined ? "; took " : "; recovered in ") + "\(decimal(r)) s" }
        return s
    }
}
