import Foundation
import ThorTensor
import ThorModel

/// The paper's comparison set trained and evaluated with one budget (`thor experiment paper`):
/// top-2, top-p, THOR top-p, THOR top-p without the task level, without the context gate, and
/// the dense baseline. Each variant is a `TrainingRun` in `out/<id>/run`; its test-set figures go
/// to `out/<id>/result.json` when it has finished. A sweep skips variants whose result exists
/// (for the same configuration), continues an unfinished one from its last checkpoint, and
/// writes `report.md` and the SVG plots (`PaperReport`) from every result at the end.
public final class PaperExperiment {
    /// One row of the comparison: a name and the configuration keys that make it.
    public struct Variant: Sendable, Equatable {
        /// Directory name and `--variants` name.
        public var id: String
        /// Name in the report.
        public var label: String
        /// `section.key` → value applied on top of the sweep's configuration.
        public var overrides: [String: String]
        public init(id: String, label: String, overrides: [String: String]) {
            self.id = id; self.label = label; self.overrides = overrides
        }
    }

    /// The paper's comparison set (Tables 1, 2 and 4), in report order.
    public static let comparisonSet: [Variant] = [
        Variant(id: "top2", label: "top-2", overrides: ["routing.variant": "top2"]),
        Variant(id: "topp", label: "top-p", overrides: ["routing.variant": "topp"]),
        Variant(id: "thor-topp", label: "THOR top-p", overrides: ["routing.variant": "thor-topp"]),
        Variant(id: "no-task-level", label: "THOR top-p w/o task level", overrides: ["routing.variant": "no-task-level"]),
        Variant(id: "no-context", label: "THOR top-p w/o context gate", overrides: ["routing.variant": "no-context"]),
        Variant(id: "dense", label: "dense", overrides: ["routing.variant": "dense"]),
    ]

    /// Further rows `--variants` may name (ablations of the investigation in docs/reproduction.md).
    public static let extraVariants: [Variant] = [
        Variant(id: "thor-topp-mask", label: "THOR top-p, hard mask (task_prior off)",
                overrides: ["routing.variant": "thor-topp", "routing.task_prior": "false"]),
        Variant(id: "gold", label: "THOR top-p, gold task", overrides: ["routing.variant": "gold"]),
        Variant(id: "thor-topk", label: "THOR top-k", overrides: ["routing.variant": "thor-topk"]),
        Variant(id: "top1", label: "top-1 (Switch)", overrides: ["routing.variant": "top1"]),
    ]

    public static var knownVariants: [Variant] { comparisonSet + extraVariants }

    public struct Options {
        /// Directory with train.tsv, dev.tsv, test.tsv (nil: the built-in synthetic corpus).
        public var corpus: String?
        /// The short version (tiny model, few steps, small slice of the corpus).
        public var quick = false
        /// Where runs, results, report.md and the plots go.
        public var out: String
        /// `section.key` → value applied to every variant (after the size, before the variant's keys).
        public var overrides: [String: String] = [:]
        public var variants: [Variant] = PaperExperiment.comparisonSet
        public init(out: String) { self.out = out }
    }

    /// Where the sweep stands, after every optimizer step of the variant in training.
    public struct Progress {
        /// 0-based index of the variant in training and the number of variants.
        public var index: Int
        public var count: Int
        public var variant: Variant
        public var step: Int
        public var maxSteps: Int
        /// Training steps of the whole sweep done (finished variants count fully) and in all.
        public var sweepSteps: Int
        public var sweepTotal: Int
        /// Seconds left for the whole sweep, from this session's rate (nil before the first step).
        public var eta: Double?
    }

    /// A signal stopped the sweep (the variant's checkpoint is saved; the next run continues it).
    public struct Interrupted: Error, CustomStringConvertible {
        public var variant: String
        public var description: String { "interrupted while training \(variant); run the same command again to continue" }
    }

    public let options: Options
    public var info: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    public var onProgress: ((Progress) -> Void)?

    public init(options: Options) { self.options = options }

    /// The configuration every variant starts from: the quick-start model and budget
    /// (`ThorConfiguration.quickstart`: d = 64, 2+2 layers, 8 experts, 1200 steps of ≤ 2048 tokens,
    /// 2 expert workers), or with `quick` a tiny one (d = 32, 4 experts, 60 steps, 1200 pairs, in-process).
    public static func baseConfiguration(corpus: String?, quick: Bool) -> ThorConfiguration {
        var c = ThorConfiguration.quickstart
        if quick {
            c.model.modelDim = 32; c.model.hiddenDim = 64; c.model.heads = 2
            c.routing.experts = 4
            c.training.maxSteps = 60; c.training.warmupSteps = 20; c.training.learningRate = 3e-3
            c.training.maxTokensPerBatch = 512
            c.training.devInterval = 0; c.training.checkpointInterval = 0; c.training.logInterval = 10
            c.data.syntheticPairs = 1200; c.data.syntheticEvalPairsPerTask = 10; c.data.vocabularySize = 400
            c.evaluation.maxOutputLength = 32
            c.cluster.workers = 0
        }
        if let corpus {
            c.data.train = corpus + "/train.tsv"; c.data.dev = corpus + "/dev.tsv"; c.data.test = corpus + "/test.tsv"
        }
        return c
    }

    /// The configuration of one variant. The dense baseline has no routed experts, so it always
    /// runs in-process (`cluster.workers = 0`): a worker would host nothing, and the run refuses it.
    public func configuration(of v: Variant) throws -> ThorConfiguration {
        var c = try Self.baseConfiguration(corpus: options.corpus, quick: options.quick).applying(overrides: options.overrides)
        c = try c.applying(overrides: v.overrides)
        if c.routing.variant == .dense { c.cluster.workers = 0 }
        return c
    }

    func directory(of v: Variant) -> String { options.out + "/" + v.id }
    func resultPath(of v: Variant) -> String { directory(of: v) + "/result.json" }

    /// The finished result of `v` in `out`, if any; a result of another configuration is an error.
    public func finishedResult(of v: Variant) throws -> PaperVariantResult? {
        let path = resultPath(of: v)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let r: PaperVariantResult
        do { r = try JSONDecoder().decode(PaperVariantResult.self, from: data) } catch {
            throw TrainingError.data("\(path) is not a result of `thor experiment paper` (\(error)); delete it to train \(v.id) again")
        }
        let expected = try configuration(of: v).jsonString
        guard r.configuration == expected else {
            throw TrainingError.invalidConfiguration(
                "\(path) holds a result of another configuration (other size, corpus, seed or --set keys); use another --out or delete \(directory(of: v))")
        }
        return r
    }

    /// Trains and evaluates every variant without a finished result, then writes the report.
    /// Returns every variant's result, in `options.variants` order.
    @discardableResult
    public func run() throws -> [PaperVariantResult] {
        let fm = FileManager.default
        try fm.createDirectory(atPath: options.out, withIntermediateDirectories: true)
        let configurations = try options.variants.map { try configuration(of: $0) }
        var results: [PaperVariantResult?] = try options.variants.map { try finishedResult(of: $0) }
        let total = configurations.map(\.training.maxSteps).reduce(0, +)
        var sweepDone = zip(results, configurations).reduce(0) { $0 + ($1.0 == nil ? 0 : $1.1.training.maxSteps) }
        let skipped = results.enumerated().compactMap { $0.element == nil ? nil : options.variants[$0.offset].id }
        if !skipped.isEmpty { info("experiment: finished results found for \(skipped.joined(separator: ", ")); skipping them") }
        let clock = Stopwatch()
        var sessionSteps = 0
        for (i, v) in options.variants.enumerated() where results[i] == nil {
            let c = configurations[i]
            info("experiment: [\(i + 1)/\(options.variants.count)] \(v.label) (\(v.id)): \(c.training.maxSteps) steps")
            let dir = directory(of: v)
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var runOptions = TrainingRun.Options(configuration: c)
            runOptions.saveDirectory = dir + "/run"
            // An unfinished run of the same configuration continues from its last checkpoint.
            let stored = fm.contents(atPath: dir + "/configuration.json").map { String(decoding: $0, as: UTF8.self) }
            let last = dir + "/run/checkpoint-last"
            if stored == c.jsonString, fm.fileExists(atPath: last + "/"), (try? fm.destinationOfSymbolicLink(atPath: last)) != nil {
                runOptions.resume = last
                info("experiment: \(v.id): continuing from \(last)")
            } else {
                runOptions.overwrite = true
                try c.jsonString.write(toFile: dir + "/configuration.json", atomically: true, encoding: .utf8)
            }
            let run = TrainingRun(options: runOptions)
            let prefix = "[\(v.id)] "
            let info = self.info
            run.info = { info(prefix + $0) }
            var table = ""
            run.result = { table += $0 + "\n" }
            let startDone = sweepDone
            var firstStep: Int?
            let baseSession = sessionSteps
            run.onStep = { [onProgress] p in
                if firstStep == nil { firstStep = p.step - 1 }
                let doneHere = p.step - (firstStep ?? 0)
                sessionSteps = baseSession + doneHere
                let swept = startDone + p.step
                let remaining = total - swept
                let eta = sessionSteps > 0 ? clock.seconds / Double(sessionSteps) * Double(remaining) : nil
                onProgress?(Progress(index: i, count: self.options.variants.count, variant: v, step: p.step,
                                     maxSteps: p.maxSteps, sweepSteps: swept, sweepTotal: total, eta: eta))
            }
            let watch = Stopwatch()
            let summary = try run.run()
            guard !summary.interrupted else { throw Interrupted(variant: v.id) }
            guard let test = summary.test else { throw TrainingError.data("\(v.id): the run produced no test evaluation") }
            try table.write(toFile: dir + "/test.txt", atomically: true, encoding: .utf8)
            let r = PaperVariantResult(variant: v, configuration: c.jsonString, report: test, steps: summary.steps,
                                       seconds: watch.seconds, trainTokensPerSecond: summary.trainTokensPerSecond)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(r).write(to: URL(fileURLWithPath: resultPath(of: v)), options: .atomic)
            results[i] = r
            sweepDone += c.training.maxSteps
            info(String(format: "experiment: %@ done in %.0f s: test BLEU %.2f, experts/token %@", v.id, watch.seconds,
                        test.averageBLEU, test.expertsPerToken.map { String(format: "%.3f", $0) } ?? "-"))
        }
        let finished = results.compactMap { $0 }
        let report = PaperReport(results: finished, title: reportTitle, setup: setupLines(configurations.first))
        try report.write(to: options.out)
        info("experiment: wrote \(options.out)/report.md, \(PaperReport.bleuPlotFile), \(PaperReport.layerPlotFile)")
        return finished
    }

    var reportTitle: String {
        "thor experiment paper\(options.quick ? " --quick" : "") on \(options.corpus ?? "the built-in synthetic corpus")"
    }

    /// What the report says about the sweep: corpus, size, budget, machine.
    func setupLines(_ c: ThorConfiguration?) -> [String] {
        guard let c else { return [] }
        let m = c.model, t = c.training
        var lines = [
            "corpus: \(options.corpus ?? "built-in synthetic (\(c.data.syntheticPairs) training pairs, \(c.data.syntheticEvalPairsPerTask) dev/test pairs per task)")",
            "model: encoder-decoder, d = \(m.modelDim), d_ff = \(m.hiddenDim), \(m.heads) heads, \(m.encoderLayers)+\(m.decoderLayers) layers, "
                + "\(c.routing.experts) experts per MoE layer, moe_every = \(c.routing.moeEvery), p = \(c.routing.threshold)",
            "budget (every variant): \(t.maxSteps) steps of ≤ \(t.maxTokensPerBatch) tokens, learning rate \(t.learningRate), "
                + "warm-up \(t.warmupSteps), seed \(t.seed); greedy decoding (beam \(c.evaluation.beamSize)) on the test set",
            "machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(c.cluster.workers == 0 ? "experts in-process" : "\(c.cluster.workers) expert workers")",
        ]
        if !options.overrides.isEmpty {
            lines.append("--set: " + options.overrides.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))
        }
        return lines
    }
}

/// The figures of one finished variant (`out/<id>/result.json`).
public struct PaperVariantResult: Codable, Sendable {
    public var id: String
    public var label: String
    /// The variant's effective configuration (`ThorConfiguration.jsonString`), to recognise a stale result.
    public var configuration: String
    public var tasks: [String]
    public var bleu: [Double?]
    public var averageBLEU: Double
    public var expertsPerToken: Double?
    public var expertsPerTokenByTask: [Double?]
    public var moeLayers: [String]
    public var expertsPerTokenByLayer: [Double?]
    /// `[layer][task][expert]`: share of the task's tokens the expert served.
    public var expertUsage: [[[Double]]]
    public var taskAccuracy: Double?
    /// Row-normalized task × predicted-task matrix (empty without a task predictor).
    public var taskMatrix: [[Double]]
    public var loss: Double
    public var sentences: Int
    public var steps: Int
    /// Wall-clock seconds of training and evaluation.
    public var seconds: Double
    public var trainTokensPerSecond: Double

    public init(variant: PaperExperiment.Variant, configuration: String, report: EvaluationReport, steps: Int,
                seconds: Double, trainTokensPerSecond: Double) {
        id = variant.id; label = variant.label; self.configuration = configuration
        tasks = report.tasks; bleu = report.bleu.map { $0?.score }; averageBLEU = report.averageBLEU
        expertsPerToken = report.expertsPerToken; expertsPerTokenByTask = report.expertsPerTokenByTask
        moeLayers = report.moeLayers; expertsPerTokenByLayer = report.expertsPerTokenByLayer
        expertUsage = report.expertUsage
        taskAccuracy = report.taskAccuracy; taskMatrix = report.taskAccuracy == nil ? [] : report.taskMatrix
        loss = report.loss; sentences = report.sentences
        self.steps = steps; self.seconds = seconds; self.trainTokensPerSecond = trainTokensPerSecond
    }
}
