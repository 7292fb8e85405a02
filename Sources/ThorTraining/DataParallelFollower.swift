import Foundation
import ThorTensor
import ThorModel
import ThorData
import ThorExperts
import ThorCluster

/// A follower coordinator (rank c ≥ 1 of C; `thor coordinator`, docs/data-parallel.md step 3): the
/// same model from the same configuration and seed as the leader, its own ROUTER for the workers,
/// shard c of every batch for the whole run. Per step: sample the batch (the same sampler as the
/// leader's), forward and backward of its shard against the shared workers, send the dense gradient
/// and loss contributions to the leader, wait for the summed gradient and apply the same Adam update.
public final class DataParallelFollower {
    public struct Options {
        public var rank: Int
        public var count: Int
        /// The leader's group endpoint.
        public var leader: String
        /// This coordinator's ROUTER endpoint (the workers' `--coordinator`).
        public var bind: String
        public var configuration: ThorConfiguration
        public var resume: String?
        public var parentPID: Int32?
        public var heartbeatInterval = 0.25
        public var heartbeatLiveness = 5
        /// Seconds to wait for the leader (placement, gradients) and the workers.
        public var timeout = 600.0
        public init(rank: Int, count: Int, leader: String, bind: String, configuration: ThorConfiguration) {
            self.rank = rank; self.count = count; self.leader = leader; self.bind = bind; self.configuration = configuration
        }
    }

    public let options: Options
    public var info: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }

    public init(options: Options) throws {
        guard options.count >= 2, options.rank >= 1, options.rank < options.count else {
            throw TrainingError.invalidConfiguration("--rank must be in 1…\(options.count - 1) for --coordinators \(options.count) (rank 0 is the leader, `thor train`), got \(options.rank)")
        }
        guard options.configuration.training.microBatches == options.count else {
            throw TrainingError.invalidConfiguration("training.micro_batches is \(options.configuration.training.microBatches), but there are \(options.count) coordinators: they must be equal")
        }
        self.options = options
    }

    /// Why `run()` returned.
    public enum Exit: Equatable { case stopped(String), parentGone }

    public func run() throws -> Exit {
        let o = options
        var configuration = o.configuration
        let checkpoint = try o.resume.map { try RunCheckpoint(directory: $0) }
        let data = try TranslationData.load(configuration.data, seed: configuration.training.seed,
                                            maxPositions: configuration.model.maxPositions,
                                            tokenizer: checkpoint?.tokenizer, tasks: checkpoint?.state.tasks)
        configuration = try TrainingRun.resolve(configuration, data: data)
        let coordinator = try ClusterCoordinator(bind: o.bind, heartbeatInterval: o.heartbeatInterval, heartbeatLiveness: o.heartbeatLiveness)
        let spec = TranslationModel.expertSpec(for: configuration)
        let keys = TranslationModel.expertKeys(for: configuration)
        let backend = FollowerExpertBackend(coordinator: coordinator, spec: spec,
                                            placement: try Placement(keys: keys, workers: ["-"], strategy: .roundRobin),
                                            replication: .shippedGradients)
        let model = try TranslationModel(configuration: configuration, backend: backend)
        let t = configuration.training
        var batches = try TrainingBatches(corpus: data.train, maxTokens: t.maxTokensPerBatch,
                                          temperature: Double(t.samplingTemperature), seed: t.seed)
        var step = 0
        if let checkpoint {
            try checkpoint.restoreDense(into: model)
            try batches.restore(checkpoint.state.dataPosition)
            step = checkpoint.state.step
        }
        let group = try CoordinatorGroupFollower(leader: o.leader, rank: o.rank)
        defer { group.setLinger(milliseconds: 1000) }
        func failing<T>(_ body: () throws -> T) throws -> T {
            do { return try body() } catch {
                try? group.send(GroupMessage(.failed, text: "\(error)"))
                throw error
            }
        }
        let phases = PhaseTimer()
        coordinator.phaseTimer = phases
        // Hello: the SHA-256 of its dense parameters and of its resolved configuration (the leader compares both).
        try group.send(GroupMessage(.hello, step: step, text: DataParallelLeader.hash(model.parameters) + " "
                                        + DataParallelLeader.hash(configuration)))
        var parentGone: Bool { o.parentPID.map { getppid() != $0 } ?? false }
        /// The leader's next message; polls this coordinator's socket (worker beats) meanwhile.
        func next() throws -> GroupMessage? {
            let end = Date().timeIntervalSince1970 + o.timeout
            while Date().timeIntervalSince1970 < end {
                if let m = try group.receive(timeout: 0.02) { return m }
                try coordinator.poll(timeout: 0.02)
                if parentGone { return nil }
            }
            throw ClusterError.timeout(operation: "the leader coordinator at \(o.leader)", workers: ["leader"], seconds: o.timeout)
        }
        // The placement, then every placement worker registered here.
        while true {
            guard let m = try next() else { return .parentGone }
            if m.kind == .stop { return .stopped(m.text) }
            guard m.kind == .placement else { continue }
            let (placement, mode) = try failing { try GroupMessage.placement(fromText: m.text) }
            backend.placement = placement
            backend.replication = mode
            try failing { try backend.waitForPlacementWorkers(timeout: o.timeout) { if parentGone { throw ClusterError.launch("parent gone") } } }
            try group.send(GroupMessage(.ready))
            break
        }
        let parameters = model.parameters
        let total = parameters.reduce(0) { $0 + $1.count }
        /// One attempt at shard `rank` of step `n`: its result, or `lost` when a worker it needed was
        /// lost (the leader then rolls the step back and sends `redo`); other errors end the follower.
        func attempt(_ n: Int, _ number: Int, _ shards: [Seq2SeqBatch], _ dropout: UInt64) throws {
            try failing {
                let totals = ShardTotals(model, shards: shards)
                coordinator.currentStep = n
                model.network.zeroGradients()
                // The process behind each placement worker now: one restarted mid-attempt lost the attempt's forwards.
                let incarnations = backend.placement.workers.map { coordinator.registrations[$0]?.incarnation }
                func restarted(_ w: String) -> Bool {
                    guard let i = backend.placement.workers.firstIndex(of: w) else { return false }
                    return coordinator.registrations[w]?.incarnation != incarnations[i]
                }
                func report(_ named: [String]) throws {
                    model.network.zeroGradients()
                    model.network.dropoutState = dropout
                    info("follower coordinator \(o.rank): step \(n) (attempt \(number)) lost worker(s) \(named.joined(separator: ", ")); waiting for the leader's redo")
                    try group.send(GroupMessage(.lost, step: n, numbers: [Double(number)], text: named.joined(separator: " ")))
                }
                do {
                    let outcome = try Trainer.runShard(model, shards[o.rank], index: o.rank, totals: totals,
                                                       dropoutAtStepStart: dropout, step: n, phases: phases)
                    model.network.dropoutState = ShardTotals.dropoutState(after: o.count, from: dropout)
                    try group.send(GroupMessage(.shardDone, step: n, numbers: outcome.numbers, text: String(number),
                                                payload: DataParallelLeader.flatGradients(parameters)))
                } catch ClusterError.expertsLost(_, let workers, _) {
                    try report(workers.isEmpty ? backend.placement.workers.filter { !coordinator.isAlive($0) || restarted($0) } : workers)
                } catch ClusterError.remote(let worker, _, _, _) where restarted(worker) {
                    // A worker that died and came back as a new process during the attempt (it refuses a
                    // Backward whose Forward its old process got): as lost as a dead one.
                    try report([worker])
                }
            }
        }
        while true {
            let n = step + 1
            var work: (shards: [Seq2SeqBatch], dropout: UInt64)?
            if n <= t.maxSteps {
                try failing {
                    model.moe.activateTaskLevel(afterSteps: n - 1)
                    let batch = batches.next()
                    work = (try MicroBatches.split(batch, into: o.count, step: n), model.network.dropoutState)
                }
                try attempt(n, 0, work!.shards, work!.dropout)
            }
            // The leader's answer: the step's summed gradient, a redo, a hash request (checkpoint), or stop.
            while true {
                guard let m = try next() else { return .parentGone }
                switch m.kind {
                case .stop:
                    return .stopped(m.text)
                case .hashRequest:
                    try group.send(GroupMessage(.hash, step: step, text: DataParallelLeader.hash(parameters)))
                    continue
                case .redo:
                    // A worker was lost (or joined): the workers rolled step n back; redo the shard on the new placement.
                    guard m.step == n, let work, let number = m.numbers.first else {
                        try? group.send(GroupMessage(.failed, text: "a redo message for step \(m.step); this coordinator is at step \(n)"))
                        throw DataParallelError("follower \(o.rank): a bad redo message from the leader")
                    }
                    let (placement, mode) = try failing { try GroupMessage.placement(fromText: m.text) }
                    backend.placement = placement
                    backend.replication = mode
                    try failing { try backend.waitForPlacementWorkers(timeout: o.timeout) { if parentGone { throw ClusterError.launch("parent gone") } } }
                    try attempt(n, Int(number), work.shards, work.dropout)
                    continue
                case .apply:
                    guard m.step == n, m.numbers.count == 2, let g = m.payload, g.count == total else {
                        try? group.send(GroupMessage(.failed, text: "an apply message for step \(m.step) with \(m.payload?.count ?? 0) values; expected step \(n) with \(total)"))
                        throw DataParallelError("follower \(o.rank): a bad apply message from the leader")
                    }
                    g.withUnsafeBufferPointer { src in
                        var offset = 0
                        for p in parameters {
                            p.grad.pointer.update(from: src.baseAddress! + offset, count: p.count)
                            offset += p.count
                        }
                    }
                    Adam.update(parameters, learningRate: Float(m.numbers[0]), clipScale: Float(m.numbers[1]), step: n,
                                settings: t.adam, threads: Parallel.processors)
                    step = n
                    model.moe.activateTaskLevel(afterSteps: step)
                default:
                    continue
                }
                break
            }
        }
    }
}

extension RunCheckpoint {
    /// Loads the dense (coordinator) weights, Adam moments and dropout state into `model`; the experts
    /// are the leader's to restore (a follower coordinator's backend holds none).
    func restoreDense(into model: TranslationModel) throws {
        var staged: [(Tensor, Tensor)] = []
        for p in model.parameters {
            for (suffix, dst) in [("", p.value), (".adam_m", p.m), (".adam_v", p.v)] {
                do { staged.append((try coordinator.tensor(p.name + suffix, shape: p.shape), dst)) } catch {
                    throw TrainingError.checkpoint("\(directory): coordinator.safetensors: \(error)")
                }
            }
        }
        for (src, dst) in staged { dst.copy(from: src) }
        model.network.dropoutState = state.dropoutState
    }
}
