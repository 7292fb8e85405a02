import Foundation
import ThorTensor
import ThorModel
import ThorData
import ThorCluster

/// A whole training run as `thor train` performs it: data, tokenizer, a local
/// cluster of expert workers, the training loop with progress, metrics (JSONL),
/// periodic dev evaluation and checkpoints, and a final test evaluation.
public final class TrainingRun {
    public struct Options {
        public var configuration: ThorConfiguration
        /// Directory for metrics.jsonl and checkpoints (nil: nothing written).
        public var saveDirectory: String?
        /// A checkpoint directory to continue from (its weights, moments, data position, RNG).
        public var resume: String?
        public var transport: LocalCluster.Transport = .ipc
        public var placement: Placement.Strategy = .roundRobin
        /// Serve externally started workers on this endpoint instead of starting a local cluster.
        public var bind: String?
        /// Seconds to wait for external workers to register.
        public var registrationTimeout: Double = 300
        /// Show a progress bar on stderr.
        public var progress = true
        /// Run the final test evaluation.
        public var evaluateAtEnd = true
        /// Heartbeats and the local supervisor's restart budget.
        public var liveness = ExpertRuntime.Liveness()
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

    public let options: Options
    /// Lines for the user (stdout by default).
    public var say: (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }

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
        let fm = FileManager.default
        var configuration = options.configuration
        var checkpoint: RunCheckpoint? = nil
        if let resume = options.resume {
            let ck = try RunCheckpoint(directory: resume)
            checkpoint = ck
            var c = ck.configuration
            c.training.maxSteps = configuration.training.maxSteps
            c.training.workers = configuration.training.workers
            c.training.expertThreads = configuration.training.expertThreads
            c.training.replicas = configuration.training.replicas
            c.training.onExpertLoss = configuration.training.onExpertLoss
            configuration = c
            say("resuming from \(resume) at step \(ck.state.step)")
        }
        let t0 = Date()
        let data = try TranslationData.load(configuration.data, seed: configuration.training.seed,
                                            maxPositions: configuration.model.maxPositions,
                                            tokenizer: checkpoint?.tokenizer, tasks: checkpoint?.state.tasks)
        configuration = try Self.resolve(configuration, data: data)
        say("data: \(data.train.pairs.count) training pairs over \(data.tasks.count) tasks (\(data.tasks.joined(separator: ", "))), "
            + "dev \(data.dev.pairs.count), test \(data.test.pairs.count); BPE vocabulary \(data.tokenizer.vocabularySize) "
            + String(format: "(%.1fs)", Date().timeIntervalSince(t0)))
        let t = configuration.training
        let runtime: ExpertRuntime
        if let bind = options.bind {
            runtime = try ExpertRuntime(configuration: configuration, externalWorkers: max(1, t.workers), bind: bind,
                                        timeout: options.registrationTimeout, placement: options.placement,
                                        liveness: options.liveness, onRegistration: say)
        } else {
            runtime = try ExpertRuntime(configuration: configuration, workers: t.workers, threads: t.expertThreads,
                                        transport: options.transport, placement: options.placement, liveness: options.liveness)
        }
        defer { runtime.shutdown() }
        if let c = runtime.cluster {
            say("cluster: coordinator + \(c.workerIDs.count) expert workers at \(c.coordinator.endpoint), "
                + "\(runtime.remote?.replicas ?? 1) replicas per expert, on expert loss: \(t.onExpertLoss.rawValue)")
        } else if runtime.coordinator != nil {
            say("cluster: coordinator + \(t.workers) external expert workers")
        } else {
            say("experts run in this process (training.workers = 0)")
        }
        let model = try TranslationModel(configuration: configuration, backend: runtime.backend)
        let trainer = try Trainer(model: model, data: data, checkpoint: checkpoint)
        let coordinatorCount = model.parameters.reduce(0) { $0 + $1.count }
        let spec = TranslationModel.expertSpec(for: configuration)
        let expertCount = TranslationModel.expertKeys(for: configuration).count
        // An expert's w1 [d, f1], b1 [f1], w2 [d_ff, d], b2 [d], as `Expert` allocates them.
        let f1 = spec.activation.firstProjectionWidth(dFF: spec.hiddenDim)
        let perExpert = spec.modelDim * f1 + f1 + spec.hiddenDim * spec.modelDim + spec.modelDim
        say("model: \(configuration.routing.variant.rawValue), d=\(configuration.model.modelDim), "
            + "\(configuration.model.encoderLayers)+\(configuration.model.decoderLayers) layers, "
            + "\(model.moe.layers.count) MoE layers × \(configuration.routing.experts) experts; "
            + "\(coordinatorCount) coordinator + \(expertCount * perExpert) expert parameters")

        var metrics: MetricsLog? = nil
        if let dir = options.saveDirectory {
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try configuration.jsonString.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            metrics = try MetricsLog(path: dir + "/metrics.jsonl")
        }
        var lastCheckpoint: String? = nil
        let recovery = try ExpertLossRecovery(policy: t.onExpertLoss, runtime: runtime, trainer: trainer,
                                              lastCheckpoint: { [options] in lastCheckpoint ?? options.resume }, say: say)
        recovery.install(on: trainer)
        // Fail-over, rejoin and restore events: one line on stderr, one record in metrics.jsonl.
        let logEvent: (ClusterEvent) -> Void = { e in
            FileHandle.standardError.write(Data(("\nthor: \(e)\n").utf8))
            var rec: [String: Any] = ["split": "event", "event": e.kind.rawValue, "step": e.step, "worker": e.worker,
                                      "reason": e.reason]
            if !e.moved.isEmpty { rec["moved"] = Dictionary(uniqueKeysWithValues: e.moved.map { ($0.key.description, $0.value) }) }
            if !e.lostExperts.isEmpty { rec["lost_experts"] = e.lostExperts.map(\.description) }
            if let d = e.detectionSeconds { rec["detection_s"] = d }
            if let r = e.recoverySeconds { rec[e.kind == .rejoined ? "rejoin_s" : "recovery_s"] = r }
            try? metrics?.write(rec)
        }
        runtime.onEvent = logEvent
        recovery.onEvent = logEvent
        let signals = TerminationSignals()
        let decoding = DecodingOptions(configuration)
        var bar = ProgressBar(total: t.maxSteps, label: "train")
        var windowTokens = 0, windowStart = Date(), windowLoss = 0.0, windowSteps = 0
        var totalTokens = 0
        let runStart = Date()
        var last: StepResult? = nil
        var rate = 0.0, experts: Double? = nil
        var interrupted = false
        model.moe.startCollectingStatistics()

        func save() throws {
            guard let dir = options.saveDirectory else { return }
            let path = dir + "/checkpoint-\(trainer.step)"
            try trainer.saveCheckpoint(to: path)
            // Replace the link atomically (a new link renamed over it): a kill at any moment
            // leaves checkpoint-last pointing at a complete checkpoint.
            let link = dir + "/checkpoint-last", tmpLink = link + ".new"
            try? fm.removeItem(atPath: tmpLink)
            try fm.createSymbolicLink(atPath: tmpLink, withDestinationPath: "checkpoint-\(trainer.step)")
            guard rename(tmpLink, link) == 0 else { throw TrainingError.checkpoint("cannot update \(link): errno \(errno)") }
            lastCheckpoint = path
        }

        while trainer.step < t.maxSteps {
            if let s = signals.received {
                say("\nsignal \(s): saving a checkpoint and stopping the workers")
                interrupted = true
                break
            }
            let r = try trainer.trainStep()
            last = r
            windowTokens += r.tokens; totalTokens += r.tokens
            windowLoss += r.loss; windowSteps += 1
            let stepNow = trainer.step
            if stepNow % t.logInterval == 0 || stepNow == t.maxSteps {
                let seconds = Date().timeIntervalSince(windowStart)
                rate = Double(windowTokens) / max(seconds, 1e-9)
                experts = model.moe.takeStatistics()?.expertsPerToken()
                model.moe.startCollectingStatistics()
                var rec: [String: Any] = [
                    "split": "train", "step": stepNow, "loss": windowLoss / Double(windowSteps),
                    "l_mt": r.translationLoss, "grad_norm": r.gradientNorm, "lr": Double(r.learningRate),
                    "clip": Double(r.clipScale), "tokens_per_s": rate,
                    "elapsed_s": Date().timeIntervalSince(runStart),
                ]
                if let e = experts { rec["experts_per_token"] = e }
                if let v = r.auxiliary.task { rec["l_task"] = v }
                if let v = r.auxiliary.taskBalance { rec["l_task_lb"] = v }
                if let v = r.auxiliary.tokenBalance { rec["l_tok_lb"] = v }
                if let v = r.auxiliary.dynamic { rec["l_dyn"] = v }
                try metrics?.write(rec)
                windowTokens = 0; windowLoss = 0; windowSteps = 0; windowStart = Date()
            }
            if options.progress {
                let figs: KeyValuePairs<String, String> = ["loss": String(format: "%.3f", r.loss),
                        "L_mt": String(format: "%.3f", r.translationLoss),
                        "L_task": r.auxiliary.task.map { String(format: "%.3f", $0) } ?? "-",
                        "lb": String(format: "%.3f", (r.auxiliary.taskBalance ?? 0) + (r.auxiliary.tokenBalance ?? 0)),
                        "tok/s": rate > 0 ? String(format: "%.0f", rate) : "…",
                        "exp/tok": experts.map { String(format: "%.2f", $0) } ?? "…"]
                bar.update(stepNow, figs)
            }
            if t.devInterval > 0, stepNow % t.devInterval == 0, stepNow < t.maxSteps {
                let dev = try Evaluator.evaluate(model, tokenizer: data.tokenizer, corpus: data.dev, pairs: data.devPairs,
                                                 indices: Evaluator.spread(count: data.dev.pairs.count,
                                                                           limit: configuration.evaluation.devSentences),
                                                 options: decoding)
                model.moe.startCollectingStatistics()
                var rec = dev.record
                rec["split"] = "dev"; rec["step"] = stepNow
                try metrics?.write(rec)
                if options.progress { FileHandle.standardError.write(Data("\n".utf8)) }
                say(String(format: "dev @ %d: BLEU %.2f, loss %.3f, experts/token %@, task accuracy %@", stepNow,
                           dev.averageBLEU, dev.loss, dev.expertsPerToken.map { String(format: "%.2f", $0) } ?? "-",
                           dev.taskAccuracy.map { String(format: "%.3f", $0) } ?? "-"))
            }
            if t.checkpointInterval > 0, stepNow % t.checkpointInterval == 0, stepNow < t.maxSteps {
                try save()
            }
        }
        if options.progress && !interrupted { bar.finish() }
        try save()
        if let lastCheckpoint { say("checkpoint: \(lastCheckpoint)") }
        let elapsed = Date().timeIntervalSince(runStart)
        let trainRate = Double(totalTokens) / max(elapsed, 1e-9)
        var summary = Summary(steps: trainer.step, finalLoss: last?.loss ?? .nan, trainTokensPerSecond: trainRate,
                              expertsPerToken: experts, test: nil, lastCheckpoint: lastCheckpoint, interrupted: interrupted)
        if options.evaluateAtEnd && !interrupted {
            let test = try Evaluator.evaluate(model, tokenizer: data.tokenizer, corpus: data.test, pairs: data.testPairs,
                                              options: decoding)
            var rec = test.record
            rec["split"] = "test"; rec["step"] = trainer.step; rec["train_tokens_per_s"] = trainRate
            try metrics?.write(rec)
            summary.test = test
            say(test.table(title: "test set after \(trainer.step) steps (\(configuration.routing.variant.rawValue), "
                            + "\(t.workers == 0 ? "in-process experts" : "\(t.workers) expert workers"))"))
            say(String(format: "training: %.0f tokens/s (source + target, non-pad) over %.0f s", trainRate, elapsed))
        }
        return summary
    }
}
