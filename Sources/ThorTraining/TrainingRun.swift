import Foundation
import ThorTensor
import ThorModel
import ThorData
import ThorCluster

/// A whole training run as `thor train` performs it, in named steps: prepare (or resume),
/// then per step train, log a window, evaluate on dev, save; then finish (last checkpoint,
/// test evaluation). Info lines go to `info` (stderr), results to `result` (stdout); a
/// progress display can follow `onStep`.
public final class TrainingRun {
    public struct Options {
        /// The configuration of a new run (a resumed run continues with its checkpoint's).
        public var configuration: ThorConfiguration
        /// The keys the user gave explicitly (config file, `--set`, flags) as `section.key` → value
        /// text. A resumed run applies them to its checkpoint's configuration and refuses any that
        /// would change the model (`ThorConfiguration.resumed(from:with:)`).
        public var explicitKeys: [String: String] = [:]
        /// Directory for config.json, metrics.jsonl and checkpoints (nil: nothing written).
        public var saveDirectory: String?
        /// A checkpoint directory to continue from (its weights, moments, data position, RNG).
        public var resume: String?
        /// Replace another run's files in `saveDirectory` (otherwise such a directory is refused).
        public var overwrite = false
        public var transport: LocalCluster.Transport = .ipc
        public var placement: Placement.Strategy = .roundRobin
        /// Serve externally started workers on this endpoint instead of starting a local cluster.
        public var bind: String?
        /// CURVE keys for the links to external workers (with `bind`; nil: unsecured).
        public var security: CoordinatorSecurity?
        /// Seconds to wait for external workers to register.
        public var registrationTimeout: Double = 300
        /// Run the final test evaluation.
        public var evaluateAtEnd = true
        /// Heartbeats and the local supervisor's restart budget.
        public var liveness = ExpertRuntime.Liveness()
        /// Faults to inject (`--fault-plan`; nil: none). Needs workers (not `cluster.workers` = 0).
        public var faultPlan: FaultPlan?
        /// Serve live metrics (Prometheus text format, `GET /metrics`) on this port (nil: don't; 0: any free port).
        public var metricsPort: Int?
        /// The address the metrics endpoint listens on (IPv4; loopback by default).
        public var metricsAddress = "127.0.0.1"
        /// Data-parallel coordinators (docs/data-parallel.md, step 3): this process is the leader and starts
        /// `coordinators − 1` follower processes; needs local workers and `training.micro_batches` = this.
        public var coordinators = 1
        public init(configuration: ThorConfiguration) { self.configuration = configuration }
    }

    public struct Summary {
        public var steps: Int
        public var finalLoss: Double
        public var trainTokensPerSecond: Double
        public var expertsPerToken: Double?
        public var test: EvaluationReport?
        public var lastCheckpoint: String?
        public var interrupted: Bool
    }

    /// The figures of one optimizer step, for a progress display.
    public struct Progress {
        public var step: Int
        public var maxSteps: Int
        public var result: StepResult
        /// Tokens per second of the last logged window (nil before the first).
        public var tokensPerSecond: Double?
        /// Experts per token of the last logged window.
        public var expertsPerToken: Double?
    }

    public let options: Options
    /// Information for the user (stderr by default).
    public var info: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    /// Results: the test table and the training throughput (stdout by default).
    public var result: (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }
    /// Called after every optimizer step.
    public var onStep: ((Progress) -> Void)?
    /// Called with every cluster event (fail-over, rejoin, restart, restore) after it was logged.
    public var onEvent: ((ClusterEvent) -> Void)?
    /// Called with every fault the injector applied, and every request sent again (worker, operation, why, time).
    public var onFault: ((InjectedFault) -> Void)?
    public var onResend: ((_ worker: String, _ operation: String, _ why: String, _ at: Double) -> Void)?
    /// Called when the coordinator declares a worker dead (with a fault plan installed).
    public var onWorkerLoss: ((WorkerLoss) -> Void)?
    /// The injector of the last `run()` (nil without a fault plan): which faults fired, which did not.
    public private(set) var lastInjector: FaultInjector?
    /// Replicas per expert of the last `run()`.
    public private(set) var lastReplicas: Int?
    /// Called once the metrics endpoint listens (with it), before the run starts.
    public var onMetricsEndpoint: ((MetricsEndpoint) -> Void)?

    public init(options: Options) { self.options = options }

    /// Resolves the configuration against the data (vocabulary size, task count).
    static func resolve(_ c: ThorConfiguration, data: TranslationData) throws -> ThorConfiguration {
        var r = c
        r.model.vocabularySize = data.tokenizer.vocabularySize
        if r.routing.tasks == 0 { r.routing.tasks = data.tasks.count }
        guard r.routing.tasks == data.tasks.count else {
            throw TrainingError.invalidConfiguration("routing.tasks is \(r.routing.tasks) but the corpus has \(data.tasks.count) tasks (\(data.tasks.joined(separator: ", ")))")
        }
        try r.validate()
        return r
    }

    public func run() throws -> Summary {
        // First, so a port in use fails before anything started or was written.
        let endpoint = try options.metricsPort.map {
            do { return try MetricsEndpoint(address: options.metricsAddress, port: $0) } catch let e as MetricsEndpointError {
                throw TrainingError.invalidConfiguration("--metrics-port: \(e.description)")
            }
        }
        defer { endpoint?.stop() }
        if let endpoint {
            info("metrics: http://\(endpoint.address):\(endpoint.port)/metrics")
            onMetricsEndpoint?(endpoint)
        }
        let session = try prepare()
        defer { session.runtime.shutdown() }
        session.endpoint = endpoint
        // The first window starts now (not with the workers' registration and Assign).
        session.windowWorkers = session.runtime.remote?.coordinator.workerTotals ?? [:]
        session.windowPhases = session.trainer.phases.totals
        publishMetrics(session)
        try installFaultHandling(session)
        let injector = try installFaultInjector(session)
        lastInjector = injector
        lastReplicas = session.runtime.remote?.replicas
        defer { injector?.finish() }
        // Ctrl-C, SIGTERM and SIGHUP are caught from here until the final checkpoint is saved
        // (before: their usual action ends the process; the workers follow their parent).
        let signals = TerminationSignals()
        defer { signals.restore() }
        session.model.moe.startCollectingStatistics()
        while session.trainer.step < session.training.maxSteps {
            if let s = signals.received {
                info("\nsignal \(s): saving a checkpoint and stopping the workers")
                session.interrupted = true
                break
            }
            try step(session)
        }
        return try finish(session, signals: signals)
    }

    // MARK: - Steps

    /// Everything a run holds between its steps.
    final class Session {
        let configuration: ThorConfiguration
        let data: TranslationData
        let runtime: ExpertRuntime
        let model: TranslationModel
        let trainer: Trainer
        let metrics: MetricsLog?
        let decoding: DecodingOptions
        var training: TrainingConfiguration { configuration.training }
        /// The current log window.
        var window = Window()
        var totalTokens = 0
        let clock = Stopwatch()
        var last: StepResult?
        var lastCheckpoint: String?
        /// The highest step logged so far: records of steps at or below it (replayed after
        /// `--on-expert-loss restore`) are marked `"replayed": true`.
        var loggedThrough: [String: Int] = [:]
        var tokensPerSecond: Double?
        var expertsPerToken: Double?
        var interrupted = false
        /// The policy for experts with no replica left (kept alive for the run).
        var recovery: ExpertLossRecovery?
        /// Live metrics (`--metrics-port`).
        var endpoint: MetricsEndpoint?
        /// Phase and worker totals at the start of the log window.
        var windowPhases = PhaseTotals()
        var windowWorkers: [String: WorkerTotals] = [:]
        /// The last window's mean phase seconds per step, and expert load.
        var phasesPerStep: PhaseTotals?
        var expertLoad: [[Double]]?

        struct Window {
            var tokens = 0, loss = 0.0, steps = 0
            var clock = Stopwatch()
        }

        init(configuration: ThorConfiguration, data: TranslationData, runtime: ExpertRuntime, model: TranslationModel,
             trainer: Trainer, metrics: MetricsLog?) {
            self.configuration = configuration; self.data = data; self.runtime = runtime; self.model = model
            self.trainer = trainer; self.metrics = metrics; decoding = DecodingOptions(configuration)
        }
    }

    /// Checks the save directory and the resume request, loads the data, starts the experts
    /// and builds the model; then (only then) claims the save directory.
    func prepare() throws -> Session {
        var configuration = options.configuration
        var checkpoint: RunCheckpoint? = nil
        if let resume = options.resume {
            let ck = try RunCheckpoint(directory: resume)
            configuration = try ThorConfiguration.resumed(from: ck.configuration, with: options.explicitKeys,
                                                          checkpoint: resume)
            checkpoint = ck
        }
        let directory = try options.saveDirectory.map {
            try RunDirectory.check($0, resume: options.resume, overwrite: options.overwrite)
        }
        // Before anything starts: does it fit, and is the worker count sensible?
        try ResourceEstimate(configuration).check(externalWorkers: options.bind != nil) { info($0) }
        try checkEmulatedNodes(configuration)
        if let ck = checkpoint { info("resuming from \(ck.directory) at step \(ck.state.step)") }
        let loading = Stopwatch()
        let data = try TranslationData.load(configuration.data, seed: configuration.training.seed,
                                            maxPositions: configuration.model.maxPositions,
                                            tokenizer: checkpoint?.tokenizer, tasks: checkpoint?.state.tasks)
        configuration = try Self.resolve(configuration, data: data)
        for w in data.warnings { info("warning: \(w)") }
        info("data: \(data.train.pairs.count) training pairs over \(data.tasks.count) tasks (\(data.tasks.joined(separator: ", "))), "
            + "dev \(data.dev.pairs.count), test \(data.test.pairs.count); BPE vocabulary \(data.tokenizer.vocabularySize) "
            + String(format: "(%.1fs)", loading.seconds))
        let runtime = try startExperts(configuration)
        do {
            let model = try TranslationModel(configuration: configuration, backend: runtime.backend)
            let trainer = try Trainer(model: model, data: data, checkpoint: checkpoint)
            describe(model)
            if let group = runtime.dataParallel, let remote = runtime.remote {
                try group.connect(placement: remote.placement, replication: remote.replication,
                                  parameters: model.parameters, step: trainer.step, configuration: configuration)
                trainer.dataParallel = group
                info("data-parallel: \(group.count) coordinators (this leader + \(group.count - 1) followers at "
                     + group.followerEndpoints.joined(separator: ", ") + "), coordinator c takes shard c of every batch")
            }
            let metrics = try directory.map { try $0.open(configuration: configuration, resumingAt: checkpoint?.state.step) }
            return Session(configuration: configuration, data: data, runtime: runtime, model: model,
                           trainer: trainer, metrics: metrics)
        } catch {
            runtime.shutdown()
            throw error
        }
    }

    /// Refuses emulated nodes before anything starts when they cannot work: with `--bind`,
    /// without the privilege to make network namespaces, or without `ip`.
    func checkEmulatedNodes(_ configuration: ThorConfiguration) throws {
        guard configuration.cluster.emulateNodes > 0 else { return }
        if options.bind != nil {
            throw ClusterError.launch("cluster.emulate_nodes (--emulate-nodes) starts local workers in network namespaces; "
                                      + "it cannot be combined with --bind (workers started elsewhere)")
        }
        try NetworkTools.checkPrivilege(purpose: "--emulate-nodes")
        _ = try NetworkTools().require("ip", package: "iproute2", purpose: "--emulate-nodes")
    }

    /// Starts the expert runtime the configuration and options ask for.
    func startExperts(_ configuration: ThorConfiguration) throws -> ExpertRuntime {
        let cluster = configuration.cluster
        if let bind = options.bind {
            let runtime = try ExpertRuntime(configuration: configuration, externalWorkers: max(1, cluster.workers), bind: bind,
                                            timeout: options.registrationTimeout, placement: options.placement,
                                            liveness: options.liveness, security: options.security, onRegistration: info)
            info("cluster: coordinator + \(cluster.workers) external expert workers, "
                 + "\(runtime.remote?.replicas ?? 1) replicas per expert, on expert loss: \(cluster.onExpertLoss.rawValue)")
            return runtime
        }
        let group = try startFollowers(configuration)
        let runtime: ExpertRuntime
        do {
            runtime = try ExpertRuntime(configuration: configuration, workers: cluster.workers, threads: cluster.expertThreads,
                                        transport: options.transport, placement: options.placement, liveness: options.liveness,
                                        extraWorkerArguments: group?.workerArguments ?? [])
        } catch {
            group?.shutdown(reason: "the workers did not start")
            throw error
        }
        runtime.dataParallel = group
        if let c = runtime.cluster {
            info("cluster: coordinator + \(c.workerIDs.count) expert workers at \(c.coordinator.endpoint), "
                 + "\(runtime.remote?.replicas ?? 1) replicas per expert, on expert loss: \(cluster.onExpertLoss.rawValue)")
            if let nodes = c.nodes {
                if !nodes.removedStale.isEmpty { info("removed what killed runs left: \(nodes.removedStale.joined(separator: ", "))") }
                let groups = (0..<nodes.options.nodes).map { k in
                    "\(nodes.namespaces[k]) (\(nodes.nodeAddresses[k]): \(c.workerIDs.filter { c.node(of: $0) == k }.joined(separator: " ")))"
                }
                info("emulated nodes: \(groups.joined(separator: ", ")); links \(nodes.options.linkRate.map { "limited to \($0)" } ?? "unlimited")")
            }
        } else {
            info("experts run in this process (cluster.workers = 0)")
        }
        return runtime
    }

    /// One line on the model and its parameter counts.
    func describe(_ model: TranslationModel) {
        let configuration = model.configuration
        let coordinatorCount = model.parameters.reduce(0) { $0 + $1.count }
        let spec = TranslationModel.expertSpec(for: configuration)
        let expertCount = TranslationModel.expertKeys(for: configuration).count
        // An expert's w1 [d, f1], b1 [f1], w2 [d_ff, d], b2 [d], as `Expert` allocates them.
        let f1 = spec.activation.firstProjectionWidth(dFF: spec.hiddenDim)
        let perExpert = spec.modelDim * f1 + f1 + spec.hiddenDim * spec.modelDim + spec.modelDim
        info("model: \(configuration.routing.variant.rawValue), d=\(configuration.model.modelDim), "
            + (configuration.model.architecture == .decoderOnly
               ? "decoder-only (prefix-LM), \(configuration.model.prefixLMLayers) layers, "
               : "\(configuration.model.encoderLayers)+\(configuration.model.decoderLayers) layers, ")
            + "\(model.moe.layers.count) MoE layers × \(configuration.routing.experts) experts; "
            + "\(coordinatorCount) coordinator + \(expertCount * perExpert) expert parameters")
    }

    /// One optimizer step, then whatever is due at the new step: a log window, a dev evaluation, a checkpoint.
    func step(_ s: Session) throws {
        let r = try s.trainer.trainStep()
        s.last = r
        s.window.tokens += r.tokens; s.totalTokens += r.tokens
        s.window.loss += r.loss; s.window.steps += 1
        let t = s.training, now = s.trainer.step
        if now % t.logInterval == 0 || now == t.maxSteps { try logWindow(s, r) }
        publishMetrics(s)
        onStep?(Progress(step: now, maxSteps: t.maxSteps, result: r, tokensPerSecond: s.tokensPerSecond,
                         expertsPerToken: s.expertsPerToken))
        if t.devInterval > 0, now % t.devInterval == 0, now < t.maxSteps { try evaluateOnDev(s) }
        if t.checkpointInterval > 0, now % t.checkpointInterval == 0, now < t.maxSteps { try save(s) }
    }

    /// Closes the log window ending with step result `r`: throughput, experts per token, a metrics record.
    func logWindow(_ s: Session, _ r: StepResult) throws {
        let rate = Double(s.window.tokens) / max(s.window.clock.seconds, 1e-9)
        s.tokensPerSecond = rate
        let statistics = s.model.moe.takeStatistics()
        s.expertsPerToken = statistics?.expertsPerToken()
        s.expertLoad = statistics?.load
        s.model.moe.startCollectingStatistics()
        var rec: [String: Any] = [
            "split": "train", "step": s.trainer.step, "loss": s.window.loss / Double(s.window.steps),
            "l_mt": r.translationLoss, "grad_norm": r.gradientNorm, "lr": Double(r.learningRate),
            "clip": Double(r.clipScale), "tokens_per_s": rate, "elapsed_s": s.clock.seconds,
        ]
        if let e = s.expertsPerToken { rec["experts_per_token"] = e }
        if let v = r.auxiliary.task { rec["l_task"] = v }
        if let v = r.auxiliary.taskBalance { rec["l_task_lb"] = v }
        if let v = r.auxiliary.tokenBalance { rec["l_tok_lb"] = v }
        if let v = r.auxiliary.dynamic { rec["l_dyn"] = v }
        markReplay(s, &rec)
        addPhaseSummary(s, to: &rec)
        try s.metrics?.write(rec)
        s.window = Session.Window()
    }

    /// Fail-over, rejoin and restore events: one line on stderr and one record in metrics.jsonl;
    /// and the policy for experts with no replica left (`cluster.on_expert_loss`).
    func installFaultHandling(_ s: Session) throws {
        let recovery = try ExpertLossRecovery(policy: s.configuration.cluster.onExpertLoss, runtime: s.runtime,
                                              trainer: s.trainer,
                                              lastCheckpoint: { [weak s, options] in s?.lastCheckpoint ?? options.resume },
                                              say: info)
        recovery.install(on: s.trainer)
        let logEvent: (ClusterEvent) -> Void = { [weak s, info, weak self] e in
            info("\nthor: \(e)")
            var rec: [String: Any] = ["split": "event", "event": e.kind.rawValue, "step": e.step, "worker": e.worker,
                                      "reason": e.reason]
            if !e.moved.isEmpty { rec["moved"] = Dictionary(uniqueKeysWithValues: e.moved.map { ($0.key.description, $0.value) }) }
            if !e.lostExperts.isEmpty { rec["lost_experts"] = e.lostExperts.map(\.description) }
            if let d = e.detectionSeconds { rec["detection_s"] = d }
            if let r = e.recoverySeconds { rec[e.kind == .rejoined ? "rejoin_s" : "recovery_s"] = r }
            try? s?.metrics?.write(rec)
            self?.onEvent?(e)
        }
        s.runtime.onEvent = logEvent
        recovery.onEvent = logEvent
        s.recovery = recovery
    }

    /// A train or dev record of a step already logged (a replay after a restore) says so, so
    /// that readers count each step once: `"replayed": true` (the later record is the kept one).
    func markReplay(_ s: Session, _ rec: inout [String: Any]) {
        let step = s.trainer.step, split = rec["split"] as? String ?? ""
        if step <= s.loggedThrough[split, default: 0] { rec["replayed"] = true } else { s.loggedThrough[split] = step }
    }

    /// The fault injector of `options.faultPlan` on the run's coordinator; every fault applied,
    /// every request sent again and every frame a worker refused is one line on stderr and one
    /// `event` record in metrics.jsonl.
    func installFaultInjector(_ s: Session) throws -> FaultInjector? {
        guard let plan = options.faultPlan else { return nil }
        let injector: FaultInjector
        let coordinator: ClusterCoordinator
        if let cluster = s.runtime.cluster {
            injector = FaultInjector(plan: plan, cluster: cluster)
            coordinator = cluster.coordinator
        } else if let c = s.runtime.coordinator {
            injector = FaultInjector(faults: plan.resolved(workers: c.workerIDs), processID: { _ in nil },
                                     partitions: InjectedPartitions(coordinator: c))
            coordinator = c
        } else {
            throw TrainingError.invalidConfiguration("a fault plan needs expert workers (cluster.workers ≥ 1); the experts run in this process")
        }
        info("fault injector: \(injector.faults.count) faults planned: " + injector.faults.map(\.description).joined(separator: "; "))
        injector.onInjected = { [weak s, info, weak self] f in
            info("\nthor: \(f)")
            var rec: [String: Any] = ["split": "event", "event": "fault-injected", "fault": f.spec.kind.rawValue, "step": f.step,
                                      "phase": f.phase.rawValue, "worker": f.worker, "operation": f.operation]
            if let l = f.layer { rec["layer"] = l }
            if let k = f.skipped { rec["skipped"] = k }
            if !f.spec.kind.targetsWorker { rec["direction"] = f.spec.direction.rawValue }
            try? s?.metrics?.write(rec)
            self?.onFault?(f)
        }
        coordinator.onResend = { [weak s, info, weak self, unowned coordinator] worker, operation, why in
            info("\nthor: sent \(operation) to worker \(worker) again: \(why)")
            try? s?.metrics?.write(["split": "event", "event": "resend", "step": coordinator.currentStep, "worker": worker,
                                    "operation": operation, "reason": why])
            self?.onResend?(worker, operation, why, monotonicSeconds())
        }
        coordinator.onRefusedFrame = { [weak s, info, unowned coordinator] worker, operation in
            info("\nthor: worker \(worker) refused a damaged \(operation) frame (nothing applied)")
            try? s?.metrics?.write(["split": "event", "event": "frame-refused", "step": coordinator.currentStep, "worker": worker,
                                    "operation": operation])
        }
        coordinator.onLoss = { [weak self] loss in self?.onWorkerLoss?(loss) }
        injector.install(on: coordinator)
        return injector
    }

    /// BLEU, loss, experts per token and task accuracy on (a spread of) the dev set.
    func evaluateOnDev(_ s: Session) throws {
        s.trainer.phases.isEnabled = false  // the phases are the training steps'
        defer { s.trainer.phases.isEnabled = true }
        let dev = try Evaluator.evaluate(s.model, tokenizer: s.data.tokenizer, corpus: s.data.dev, pairs: s.data.devPairs,
                                         indices: Evaluator.spread(count: s.data.dev.pairs.count,
                                                                   limit: s.configuration.evaluation.devSentences),
                                         options: s.decoding)
        s.model.moe.startCollectingStatistics()
        var rec = dev.record
        rec["split"] = "dev"; rec["step"] = s.trainer.step
        markReplay(s, &rec)
        try s.metrics?.write(rec)
        info(String(format: "dev @ %d: BLEU %.2f, loss %.3f, experts/token %@, task accuracy %@", s.trainer.step,
                    dev.averageBLEU, dev.loss, dev.expertsPerToken.map { String(format: "%.2f", $0) } ?? "-",
                    dev.taskAccuracy.map { String(format: "%.3f", $0) } ?? "-"))
    }

    /// Writes `checkpoint-STEP` and points `checkpoint-last` at it.
    func save(_ s: Session) throws {
        guard let dir = options.saveDirectory else { return }
        s.trainer.phases.isEnabled = false  // the phases (and workers' timings) are the training steps'
        defer { s.trainer.phases.isEnabled = true }
        let fm = FileManager.default
        let path = dir + "/checkpoint-\(s.trainer.step)"
        try s.trainer.saveCheckpoint(to: path)
        // Replace the link atomically (a new link renamed over it): a kill at any moment
        // leaves checkpoint-last pointing at a complete checkpoint.
        let link = dir + "/checkpoint-last", tmpLink = link + ".new"
        try? fm.removeItem(atPath: tmpLink)
        try fm.createSymbolicLink(atPath: tmpLink, withDestinationPath: "checkpoint-\(s.trainer.step)")
        guard rename(tmpLink, link) == 0 else { throw TrainingError.checkpoint("cannot update \(link): errno \(errno)") }
        s.lastCheckpoint = path
    }

    /// The last checkpoint, then (unless interrupted) the test evaluation and the results.
    func finish(_ s: Session, signals: TerminationSignals? = nil) throws -> Summary {
        try save(s)
        if let path = s.lastCheckpoint { info("checkpoint: \(path)") }
        // Saved: a signal from now on ends the process as usual (the test evaluation is not
        // worth a checkpoint); one caught while saving skips the evaluation.
        signals?.restore()
        if let sig = signals?.received, !s.interrupted {
            info("\nsignal \(sig): stopping after the final checkpoint (no test evaluation)")
            s.interrupted = true
        }
        let elapsed = s.clock.seconds
        let trainRate = Double(s.totalTokens) / max(elapsed, 1e-9)
        var summary = Summary(steps: s.trainer.step, finalLoss: s.last?.loss ?? .nan, trainTokensPerSecond: trainRate,
                              expertsPerToken: s.expertsPerToken, test: nil, lastCheckpoint: s.lastCheckpoint,
                              interrupted: s.interrupted)
        guard options.evaluateAtEnd && !s.interrupted else { return summary }
        s.trainer.phases.isEnabled = false
        let test = try Evaluator.evaluate(s.model, tokenizer: s.data.tokenizer, corpus: s.data.test, pairs: s.data.testPairs,
                                          options: s.decoding)
        var rec = test.record
        rec["split"] = "test"; rec["step"] = s.trainer.step; rec["train_tokens_per_s"] = trainRate
        try s.metrics?.write(rec)
        summary.test = test
        let workers = s.configuration.cluster.workers
        result(test.table(title: "test set after \(s.trainer.step) steps (\(s.configuration.routing.variant.rawValue), "
                          + "\(workers == 0 ? "in-process experts" : "\(workers) expert workers"))"))
        result(String(format: "training: %.0f tokens/s (source + target, non-pad) over %.0f s", trainRate, elapsed))
        return summary
    }
}

extension TrainingRun {
    /// The log window's phases into a metrics record: `step_s` (wall seconds per step),
    /// `phase_s` (coordinator seconds per step by phase) and, with workers, `worker_phase_s`
    /// (per worker: its own decode, queue, compute, compute_cpu, encode seconds per step, and
    /// `replies` per step). Means over the window's steps.
    func addPhaseSummary(_ s: Session, to rec: inout [String: Any]) {
        let steps = Double(max(1, s.window.steps))
        rec["step_s"] = s.window.clock.seconds / steps
        let now = s.trainer.phases.totals
        let window = now - s.windowPhases
        s.windowPhases = now
        s.phasesPerStep = PhaseTotals(seconds: window.seconds.map { $0 / steps })
        rec["phase_s"] = s.phasesPerStep!.byName
        guard let coordinator = s.runtime.remote?.coordinator else { return }
        let totals = coordinator.workerTotals
        var workers: [String: Any] = [:]
        for (w, t) in totals {
            let d = t - (s.windowWorkers[w] ?? WorkerTotals())
            workers[w] = ["decode": d.timings.decode / steps, "queue": d.timings.queue / steps,
                          "compute": d.timings.compute / steps, "compute_cpu": d.timings.computeCPU / steps,
                          "encode": d.timings.encode / steps, "replies": Double(d.replies) / steps,
                          "timed_replies": Double(d.timedReplies) / steps]
        }
        s.windowWorkers = totals
        rec["worker_phase_s"] = workers
    }

    /// Publishes the run's current figures to the metrics endpoint (when serving).
    func publishMetrics(_ s: Session) {
        guard let endpoint = s.endpoint else { return }
        var m = MetricsExposition()
        m.step = s.trainer.step
        m.maxSteps = s.training.maxSteps
        if let r = s.last {
            m.losses["total"] = r.loss
            m.losses["l_mt"] = r.translationLoss
            if let v = r.auxiliary.task { m.losses["l_task"] = v }
            if let v = r.auxiliary.taskBalance { m.losses["l_task_lb"] = v }
            if let v = r.auxiliary.tokenBalance { m.losses["l_tok_lb"] = v }
            if let v = r.auxiliary.dynamic { m.losses["l_dyn"] = v }
            m.gradientNorm = r.gradientNorm
            m.learningRate = Double(r.learningRate)
        }
        m.tokensTotal = s.totalTokens
        m.tokensPerSecond = s.tokensPerSecond
        m.expertsPerToken = s.expertsPerToken
        m.phases = s.trainer.phases.totals
        m.phasesPerStep = s.phasesPerStep
        m.expertLoad = s.expertLoad
        if let c = s.runtime.remote?.coordinator {
            m.workerTotals = c.workerTotals
            m.workers = c.workerIDs.compactMap { id in
                c.registrations[id].map { (id: id, up: c.isAlive(id), incarnation: $0.incarnation) }
            }
        }
        endpoint.publish(m.text)
    }
}
