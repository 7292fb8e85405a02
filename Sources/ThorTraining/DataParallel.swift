import Foundation
import Crypto
import ThorTensor
import ThorModel
import ThorExperts
import ThorCluster

/// The leader's side of C data-parallel coordinators (docs/data-parallel.md, step 3).
///
/// Coordinator c (0 … C−1) takes shard c of every batch (`MicroBatches.shard`); the leader (rank 0)
/// owns the placement, the workers' Step, checkpoints and evaluation. Each step: the leader runs
/// shard 0 while each follower runs its shard against the same workers over its own ROUTER; each
/// follower sends its dense gradient and loss contributions (`GroupMessage.shardDone`, which also
/// says every Backward of its shard was answered); the leader adds them to its own **in shard
/// order** (`g = g_0; g += g_1; …`, the micro-batch step's float adds), computes the global norm
/// (the workers settle their shard buffers at GradNorm), steps the workers, and sends the summed
/// gradient with the learning rate and clip scale back (`apply`): every coordinator runs the same
/// Adam update on the same bits. The checkpoint is that of the in-process run with
/// `training.micro_batches = C`, byte for byte.
public final class DataParallelLeader {
    public let count: Int
    public let group: CoordinatorGroupLeader
    /// The follower coordinators' ROUTER endpoints (ranks 1 … C−1): each worker connects to them too.
    public let followerEndpoints: [String]
    /// Local follower processes (rank → pid), when this process started them.
    public private(set) var processes: [Int: pid_t] = [:]
    private var temporaryDirectory: String?
    /// Seconds to wait for a follower's message before giving up.
    public var timeout: Double = 600
    /// Shard results that arrived early (a follower runs ahead while the leader checkpoints).
    private var early: [GroupMessage] = []
    private var stopped = false
    /// The placement the followers route by (`connect`, `redo`), and the process (incarnation) behind
    /// each of its workers on the leader's links then.
    private var sentPlacement: Placement? {
        didSet { incarnations = [:] }
    }
    private var incarnations: [String: UInt64?] = [:]
    /// The step the followers are on, the attempt at it (0, then each `redo`'s), and what each follower
    /// reported of that attempt (`shardDone` or `lost`): an attempt is over when every follower reported.
    private var current = (step: 0, attempt: 0)
    private var reports: [Int: GroupMessage] = [:]
    /// The current attempt cannot be used (rolled back): the next `accumulate` redoes the step.
    private var spent = false
    /// Steps redone with the followers (a worker lost or joined mid-step).
    public private(set) var redone = 0

    /// A group of `count` coordinators on this machine: binds the group socket and picks the followers'
    /// endpoints in a private temporary directory (ipc) or on loopback ports (tcp).
    public init(count: Int, transport: LocalCluster.Transport) throws {
        guard count >= 2 else { throw TrainingError.invalidConfiguration("data-parallel coordinators: need at least 2, got \(count)") }
        self.count = count
        switch transport {
        case .ipc:
            var template = Array(((ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp") + "/thor-group-XXXXXX").utf8CString)
            guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                throw ClusterError.launch("cannot create a temporary directory for the coordinators' sockets")
            }
            let path = String(cString: dir)
            temporaryDirectory = path
            group = try CoordinatorGroupLeader(bind: "ipc://\(path)/leader.sock", followers: count - 1)
            followerEndpoints = (1..<count).map { "ipc://\(path)/coordinator-\($0).sock" }
        case .tcp:
            group = try CoordinatorGroupLeader(bind: "tcp://127.0.0.1:*", followers: count - 1)
            followerEndpoints = try (1..<count).map { _ in try Self.freeLoopbackEndpoint() }
        }
    }

    deinit { shutdown(reason: "the leader is done") }

    /// A loopback tcp endpoint with a port free now (bound and released).
    static func freeLoopbackEndpoint() throws -> String {
        let probe = try CoordinatorGroupLeader(bind: "tcp://127.0.0.1:*", followers: 1)
        return probe.endpoint
    }

    /// Arguments that make a worker serve the followers too (`thor worker --coordinator`).
    public var workerArguments: [String] { followerEndpoints.flatMap { ["--coordinator", $0] } }

    /// Starts the C − 1 follower processes (`thor coordinator --rank c …`) with `configuration`
    /// (written next to the sockets) and, when resuming, the checkpoint directory.
    public func startFollowers(binary: String, configuration: ThorConfiguration, resume: String?,
                               heartbeatInterval: Double, heartbeatLiveness: Int) throws {
        let dir = temporaryDirectory ?? NSTemporaryDirectory()
        let file = "\(dir)/config-\(getpid()).json"
        try configuration.jsonString.write(toFile: file, atomically: true, encoding: .utf8)
        for rank in 1..<count {
            var args = ["coordinator", "--rank", String(rank), "--coordinators", String(count), "--leader", group.endpoint,
                        "--bind", followerEndpoints[rank - 1], "--config", file, "--parent-pid", String(getpid()),
                        "--heartbeat-interval", String(heartbeatInterval), "--heartbeat-liveness", String(heartbeatLiveness)]
            if let resume { args += ["--resume", resume] }
            processes[rank] = try LocalCluster.spawn(binary, args, processGroup: 0)
        }
    }

    /// A local follower that exited, with how (reaped).
    private func exitedFollower() -> String? {
        for (rank, pid) in processes.sorted(by: { $0.key < $1.key }) where pid > 0 {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                processes[rank] = 0
                let how = status & 0x7f == 0 ? "exit status \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
                return "follower coordinator \(rank) (pid \(pid)) exited (\(how))"
            }
        }
        return nil
    }

    /// The next message from a follower; throws when one exited, failed, or none spoke within `timeout`.
    private func next(_ what: String) throws -> GroupMessage {
        let end = Date().timeIntervalSince1970 + timeout
        while true {
            if let m = try group.receive(timeout: 0.1) {
                if m.kind == .failed { throw DataParallelError("follower coordinator \(m.rank) failed: \(m.text)") }
                return m
            }
            if let gone = exitedFollower() { throw ClusterError.launch(gone + " while the leader waited for \(what)") }
            guard Date().timeIntervalSince1970 < end else {
                throw ClusterError.timeout(operation: what, workers: ["follower coordinators"], seconds: timeout)
            }
        }
    }

    /// Waits for every follower's hello (its parameters must hash like `parameters`), sends each the
    /// placement, and waits until every follower has every placement worker registered.
    public func connect(placement: Placement, replication: ReplicationMode, parameters: [Parameter], step: Int,
                        configuration: ThorConfiguration) throws {
        let hash = Self.hash(parameters), configHash = Self.hash(configuration)
        var hellos = Set<Int>()
        while hellos.count < count - 1 {
            let m = try next("the follower coordinators' hello")
            guard m.kind == .hello else { continue }
            guard m.step == step else {
                throw DataParallelError("follower coordinator \(m.rank) starts at step \(m.step), the leader at step \(step)")
            }
            let words = m.text.split(separator: " ").map(String.init)
            guard words.count == 2, words[1] == configHash else {
                throw DataParallelError("follower coordinator \(m.rank) runs another configuration (resolved, SHA-256 "
                    + "\((words.last ?? "").prefix(16))…, the leader's \(configHash.prefix(16))…): give it the leader's (`thor train --print-config`)")
            }
            guard words[0] == hash else {
                throw DataParallelError("follower coordinator \(m.rank) built other dense parameters (SHA-256 \(words[0].prefix(16))…, the leader's \(hash.prefix(16))…): same configuration and seed?")
            }
            hellos.insert(m.rank)
        }
        sentPlacement = placement
        let text = GroupMessage.placementText(placement, replication: replication)
        for rank in 1..<count { try group.send(GroupMessage(.placement, step: step, text: text), to: rank) }
        var ready = Set<Int>()
        while ready.count < count - 1 {
            let m = try next("the follower coordinators' workers")
            // A follower starts its first shard as soon as it is ready: keep what it sends meanwhile.
            if m.kind == .ready { ready.insert(m.rank) } else if m.kind == .shardDone || m.kind == .lost { early.append(m) }
        }
    }

    /// Shard 0 here, the others' results gathered: the dense gradient of the whole step in every
    /// parameter's `grad` (summed in shard order) and the step's losses. What `Trainer.optimizerStep`
    /// runs with data-parallel coordinators instead of `accumulate`.
    ///
    /// A worker lost (or joined) changes the placement: the step is redone by every coordinator
    /// (docs/data-parallel.md, step 4). When the leader's placement is no longer the one the followers
    /// route by, or the attempt was rolled back, `redo` first waits until every follower reported its
    /// attempt (none has a request in flight), rolls the workers back (ZeroGradients), and sends the new
    /// placement with the next attempt number; a follower that met a lost worker reports `lost`, and the
    /// leader then throws `stepAborted` (the Trainer rolls back and calls this again).
    func accumulate(_ model: TranslationModel, batch: Seq2SeqBatch, step next: Int,
                    phases: PhaseTimer) throws -> (translationLoss: Double, auxiliary: AuxiliaryLosses) {
        begin(step: next)
        if incarnations.isEmpty, !placementChanged(model), let remote = model.backend as? RemoteExpertBackend { noteIncarnations(remote) }
        if spent || placementChanged(model) { try redo(model, step: next) }
        let shards = try MicroBatches.split(batch, into: count, step: next)
        let totals = ShardTotals(model, shards: shards)
        let dropout = model.network.dropoutState
        var outcomes = [try Trainer.runShard(model, shards[0], index: 0, totals: totals, dropoutAtStepStart: dropout,
                                             step: next, phases: phases)]
        model.network.dropoutState = ShardTotals.dropoutState(after: count, from: dropout)
        try gather("the shards of step \(next)")
        if let lost = reports.values.filter({ $0.kind == .lost }).min(by: { $0.rank < $1.rank }) {
            try absorb(lost, model)
            spent = true
            throw ClusterError.stepAborted(worker: lost.text.split(separator: " ").first.map(String.init) ?? "?", step: next)
        }
        // A fail-over during the step moved experts the followers sent to the old hosts: redo the step.
        if placementChanged(model) {
            spent = true
            let gone = sentPlacement!.workers.filter { !(model.backend as! RemoteExpertBackend).placement.workers.contains($0) }
            throw ClusterError.stepAborted(worker: gone.first ?? "?", step: next)
        }
        let parameters = model.parameters
        let total = parameters.reduce(0) { $0 + $1.count }
        for rank in 1..<count {
            let m = reports[rank]!
            guard let g = m.payload, g.count == total else {
                throw DataParallelError("follower coordinator \(rank) sent \(m.payload?.count ?? 0) gradient values, expected \(total)")
            }
            outcomes.append(try ShardOutcome(numbers: m.numbers, layers: totals.layerTotals.count))
            g.withUnsafeBufferPointer { src in
                var offset = 0
                for p in parameters {
                    Kernels.add(src.baseAddress! + offset, into: p.grad.pointer, count: p.count)
                    offset += p.count
                }
            }
        }
        return ShardOutcome.combine(outcomes, totals: totals)
    }

    /// The followers start step `step` (attempt 0) on their own once they applied the step before.
    private func begin(step: Int) {
        guard current.step != step else { return }
        current = (step, 0)
        reports = [:]
        spent = false
        for m in early where m.step == step && Self.attempt(of: m) == 0 { reports[m.rank] = m }
        early.removeAll { $0.step <= step }
    }

    /// The attempt a follower's `shardDone` or `lost` belongs to.
    private static func attempt(of m: GroupMessage) -> Int {
        m.kind == .lost ? Int(m.numbers.first ?? -1) : (Int(m.text) ?? 0)
    }

    /// Waits until every follower reported the current attempt (keeps later steps' results for later).
    private func gather(_ what: String) throws {
        while reports.count < count - 1 {
            let m = try self.next(what)
            guard m.kind == .shardDone || m.kind == .lost else { continue }
            if m.step == current.step, Self.attempt(of: m) == current.attempt { reports[m.rank] = m }
            else if m.step > current.step { early.append(m) }
        }
    }

    /// Before the Trainer rolls back step `step` (a worker lost mid-step): waits until no follower has a
    /// request of the step in flight, so the workers' ZeroGradients is the last word on the step.
    func quiesce(step: Int) throws {
        begin(step: step)
        try gather("the followers to finish step \(step) before its rollback")
        spent = true
    }

    /// Makes the leader's placement account for the workers a follower found lost: its own links learn
    /// of a killed worker within the liveness window (a local worker's exit at once); a worker still
    /// answering the leader is declared lost too, since the follower cannot reach it.
    private func absorb(_ report: GroupMessage, _ model: TranslationModel) throws {
        guard let remote = model.backend as? RemoteExpertBackend else { return }
        let c = remote.coordinator
        let named = report.text.split(separator: " ").map(String.init).filter { c.registrations[$0] != nil }
        // Gone, or back as a new process (the backend then absorbs the loss itself: it holds none of its experts).
        func settled(_ w: String) -> Bool {
            c.lost[w] != nil || !c.isAlive(w) || (incarnations[w].map { $0 != c.registrations[w]?.incarnation } ?? false)
        }
        let end = Date().timeIntervalSince1970 + c.livenessWindow * 2 + 1
        while !named.allSatisfy(settled) && Date().timeIntervalSince1970 < end { try c.poll(timeout: 0.05) }
        for w in named where c.lost[w] == nil && (incarnations[w].map { $0 == c.registrations[w]?.incarnation } ?? true) {
            c.declareLost(w, reason: "follower coordinator \(report.rank) lost it at step \(report.step)")
        }
    }

    /// Notes the process behind each worker of the placement just sent to the followers.
    private func noteIncarnations(_ remote: RemoteExpertBackend) {
        for w in remote.placement.workers { incarnations[w] = remote.coordinator.registrations[w]?.incarnation }
    }

    /// Rolls the step back on the workers and starts the next attempt: every follower redoes its
    /// shard on the leader's (new) placement.
    private func redo(_ model: TranslationModel, step: Int) throws {
        try gather("the followers to finish step \(step) before its redo")
        try model.backend.zeroGradients()
        guard let remote = model.backend as? RemoteExpertBackend else { return }
        current.attempt += 1
        reports = [:]
        spent = false
        redone += 1
        sentPlacement = remote.placement
        noteIncarnations(remote)
        let text = GroupMessage.placementText(remote.placement, replication: remote.replication)
        for rank in 1..<count { try group.send(GroupMessage(.redo, step: step, numbers: [Double(current.attempt)], text: text), to: rank) }
    }

    /// Whether the leader's placement is no longer the one the followers route by (a worker lost or joined).
    private func placementChanged(_ model: TranslationModel) -> Bool {
        guard let remote = model.backend as? RemoteExpertBackend, let sent = sentPlacement else { return false }
        return remote.placement != sent
    }

    /// After the workers committed step `step`: the summed gradient, learning rate and clip scale to every follower.
    func broadcast(_ parameters: [Parameter], learningRate: Float, clipScale: Float, step: Int) throws {
        let m = GroupMessage(.apply, step: step, numbers: [Double(learningRate), Double(clipScale)], payload: Self.flatGradients(parameters))
        for rank in 1..<count { try group.send(m, to: rank) }
    }

    /// Compares every follower's parameter hash with the leader's after `step` (a checkpoint); throws on a mismatch.
    public func verifyParameters(_ parameters: [Parameter], step: Int) throws {
        let mine = Self.hash(parameters)
        for rank in 1..<count { try group.send(GroupMessage(.hashRequest, step: step), to: rank) }
        var seen = Set<Int>()
        while seen.count < count - 1 {
            let m = try next("the follower coordinators' parameter hashes")
            if m.kind == .shardDone || m.kind == .lost { early.append(m); continue }
            guard m.kind == .hash else { continue }
            guard m.step == step, m.text == mine else {
                throw DataParallelError("follower coordinator \(m.rank)'s dense parameters differ from the leader's at step \(step) "
                    + "(SHA-256 \(m.text.prefix(16))… at its step \(m.step), the leader's \(mine.prefix(16))…): the run stops")
            }
            seen.insert(m.rank)
        }
    }

    /// Tells every follower to stop, waits a moment for local ones to exit, then ends them; removes the sockets.
    public func shutdown(reason: String) {
        if stopped { return }
        stopped = true
        group.setLinger(milliseconds: 500)
        group.broadcastBestEffort(GroupMessage(.stop, text: reason))
        let end = Date().timeIntervalSince1970 + 3
        while processes.values.contains(where: { $0 > 0 }) && Date().timeIntervalSince1970 < end {
            _ = exitedFollower()
            usleep(10_000)
        }
        for (rank, pid) in processes where pid > 0 {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            processes[rank] = 0
        }
        if let dir = temporaryDirectory {
            if let files = try? FileManager.default.contentsOfDirectory(atPath: dir) {
                for f in files { unlink("\(dir)/\(f)") }
            }
            rmdir(dir)
            temporaryDirectory = nil
        }
    }

    /// Every parameter's gradient, in order, as one vector.
    static func flatGradients(_ parameters: [Parameter]) -> [Float] {
        var out = [Float](repeating: 0, count: parameters.reduce(0) { $0 + $1.count })
        out.withUnsafeMutableBufferPointer { dst in
            var offset = 0
            for p in parameters {
                (dst.baseAddress! + offset).update(from: p.grad.pointer, count: p.count)
                offset += p.count
            }
        }
        return out
    }

    /// SHA-256 (hex) of a resolved configuration's JSON (every coordinator must run the same one).
    public static func hash(_ configuration: ThorConfiguration) -> String {
        SHA256.hash(data: Array(configuration.jsonString.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// SHA-256 (hex) of every dense parameter's value and Adam moments, in parameter order.
    public static func hash(_ parameters: [Parameter]) -> String {
        var h = SHA256()
        for p in parameters {
            for t in [p.value, p.m, p.v] {
                h.update(bufferPointer: UnsafeRawBufferPointer(start: t.pointer, count: t.count * MemoryLayout<Float>.size))
            }
        }
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

extension ShardOutcome {
    /// As numbers for the wire: lossSum, task, taskBalance, tokenBalance, then each layer's dynamic
    /// contribution; an absent value is NaN (a present one is finite: a non-finite loss stops the step).
    var numbers: [Double] {
        [lossSum, task ?? .nan, taskBalance ?? .nan, tokenBalance ?? .nan] + dynamic.map { $0 ?? .nan }
    }

    init(numbers n: [Double], layers: Int) throws {
        guard n.count == 4 + layers else {
            throw DataParallelError("a follower's shard result has \(n.count) numbers, expected \(4 + layers)")
        }
        func opt(_ v: Double) -> Double? { v.isNaN ? nil : v }
        self.init(lossSum: n[0], task: opt(n[1]), taskBalance: opt(n[2]), tokenBalance: opt(n[3]), dynamic: n[4...].map(opt))
    }
}

extension TrainingRun {
    /// With `options.coordinators` > 1: checks the run can be data-parallel and starts the follower
    /// coordinators (before the workers, which connect to every coordinator). nil for one coordinator.
    func startFollowers(_ configuration: ThorConfiguration) throws -> DataParallelLeader? {
        let c = options.coordinators
        guard c != 1 else { return nil }
        func refuse(_ m: String) -> TrainingError { .invalidConfiguration("--coordinators \(c): \(m)") }
        guard c >= 1 else { throw refuse("the number of coordinators must be at least 1") }
        guard configuration.training.microBatches == c else {
            throw refuse("training.micro_batches is \(configuration.training.microBatches); coordinator c takes shard c of C, so it must be \(c)")
        }
        guard configuration.cluster.workers >= 1 else { throw refuse("needs expert workers (cluster.workers ≥ 1): the coordinators share them") }
        if options.bind != nil { throw refuse("--bind (workers started elsewhere) is not supported with several coordinators yet; start `thor coordinator` and `thor worker --coordinator` by hand") }
        if options.faultPlan != nil { throw refuse("fault injection with several coordinators is not supported yet (docs/data-parallel.md, step 4); a killed worker is survived") }
        if configuration.cluster.emulateNodes > 0 { throw refuse("cluster.emulate_nodes is not supported with several coordinators yet") }
        let group = try DataParallelLeader(count: c, transport: options.transport)
        do {
            try group.startFollowers(binary: try LocalCluster.locateThorBinary(), configuration: configuration, resume: options.resume,
                                     heartbeatInterval: options.liveness.heartbeatInterval,
                                     heartbeatLiveness: options.liveness.heartbeatLiveness)
        } catch {
            group.shutdown(reason: "start failed")
            throw error
        }
        return group
    }
}

/// A data-parallel run that cannot go on: a follower failed or exited, or the coordinators disagree.
public struct DataParallelError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = "data-parallel coordinators: " + description }
}
