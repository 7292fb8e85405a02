import ArgumentParser
import Foundation
import ThorTensor
import ThorTraining

/// `thor experiment`: sweeps that train several models and write a report.
/// Subcommands: `paper` (the paper's comparison set); further sweeps join `subcommands`.
struct ExperimentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experiment",
        abstract: "Run a sweep of training runs and write a report.",
        subcommands: [ExperimentPaperCommand.self, ExperimentScalingCommand.self, ExperimentPredictCommand.self]
    )
}

/// `thor experiment paper`: the paper's comparison set, one budget, one report.
struct ExperimentPaperCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "paper",
        abstract: "Train the paper's comparison set with one budget and write report.md with plots.",
        discussion: """
        Trains and evaluates on the test set: top-2, top-p, THOR top-p, THOR top-p without the \
        task level, THOR top-p without the context gate, and the dense baseline, each with the \
        same budget (steps, tokens per batch, seed). The size fits a 2-core machine: the \
        quick-start model (d = 64, d_ff = 128, 2+2 layers, 8 experts per MoE layer, MoE in layer 1 \
        of each stack, 1200 steps of ≤ 2048 tokens, 2 expert workers), about 3–4 minutes per \
        variant on 2 free cores. --quick: a tiny model (d = 32, 4 experts, 60 steps, 1200 training \
        pairs, in-process experts) to check the pipeline in under a minute; its models are too \
        small and short-trained for meaningful BLEU. With --corpus DIR, --quick still reads the \
        whole files (the slice applies to the built-in corpus). --set keys apply to \
        every variant (e.g. --set training.max_steps=2400).

        --out gets one directory per variant (run/ with config, metrics and checkpoints, \
        result.json with the test figures, test.txt with the table), then report.md (BLEU per \
        task and average, experts per token per task and per MoE layer, task accuracy, the \
        task × predicted-task matrix, per MoE layer the task × expert usage matrix) and the plots \
        bleu.svg and experts-per-layer.svg. Running the same command again skips the variants \
        with a result, continues an unfinished one from its last checkpoint and rewrites the \
        report; a result of another configuration in --out is refused. Progress and the ETA of \
        the whole sweep go to stderr; the BLEU table to stdout.

        --corpus DIR reads DIR/train.tsv, dev.tsv and test.tsv (task<TAB>source<TAB>target, \
        docs/data.md); `builtin` (the default) uses the built-in synthetic corpus.
        """)

    @Option(help: "Corpus directory with train.tsv, dev.tsv, test.tsv, or `builtin`.")
    var corpus: String = "builtin"

    @Flag(help: "A short version: tiny model, few steps, a small slice of the corpus.")
    var quick = false

    @Option(help: "Directory for the runs, results, report.md and the plots.")
    var out: String = "runs/paper"

    @Option(help: "Seed of every variant (training.seed).")
    var seed: UInt64?

    @Option(help: "Expert-worker processes per run (cluster.workers; 0: experts in-process).")
    var workers: Int?

    @Option(help: ArgumentHelp("Comma-separated variants to run instead of the comparison set: \(PaperExperiment.knownVariants.map(\.id).joined(separator: ", ")).",
                               valueName: "list"))
    var variants: String?

    @Option(name: .customLong("set"), parsing: .singleValue,
            help: ArgumentHelp("Override one key for every variant, e.g. --set training.max_steps=2400 (repeatable).",
                               valueName: "section.key=value"))
    var overrides: [String] = []

    @Flag(help: "No progress bar (info lines on stderr only).")
    var noProgress = false

    func options() throws -> PaperExperiment.Options {
        var o = PaperExperiment.Options(out: out)
        o.quick = quick
        if corpus != "builtin" {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: corpus, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("--corpus: no directory at \(corpus) (give a directory with train.tsv, dev.tsv, test.tsv, or `builtin`)")
            }
            for f in ["train.tsv", "dev.tsv", "test.tsv"] where !FileManager.default.fileExists(atPath: corpus + "/" + f) {
                throw ValidationError("--corpus: \(corpus) has no \(f) (it needs train.tsv, dev.tsv and test.tsv)")
            }
            o.corpus = corpus
        }
        var keys = try ThorConfiguration.overrides(overrides)
        if let seed { keys["training.seed"] = String(seed) }
        if let workers {
            guard workers >= 0 else { throw ValidationError("--workers must be ≥ 0, got \(workers)") }
            keys["cluster.workers"] = String(workers)
        }
        if let v = keys.keys.first(where: { $0 == "routing.variant" }) {
            throw ValidationError("--set \(v) is not allowed: the variants are the sweep's (use --variants)")
        }
        o.overrides = keys
        if let variants {
            let names = variants.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            o.variants = try names.map { n in
                guard let v = PaperExperiment.knownVariants.first(where: { $0.id == n }) else {
                    throw ValidationError("--variants: unknown variant '\(n)'; known: \(PaperExperiment.knownVariants.map(\.id).joined(separator: ", "))")
                }
                return v
            }
            guard !o.variants.isEmpty, Set(names).count == names.count else {
                throw ValidationError("--variants needs at least one variant, each named once")
            }
        }
        return o
    }

    func run() throws {
        let experiment = PaperExperiment(options: try options())
        // Every variant's configuration is checked before anything is trained.
        for v in experiment.options.variants { _ = try experiment.configuration(of: v) }
        if !noProgress {
            final class Display { var bar: ProgressBar?; var offset = 0 }
            let display = Display()
            let info = experiment.info
            experiment.info = { line in display.bar?.finish(); info(line) }
            experiment.onProgress = { p in
                // The bar counts this session's steps of the whole sweep, so its ETA is the sweep's.
                if display.bar == nil {
                    display.offset = p.sweepSteps - 1
                    display.bar = ProgressBar(total: p.sweepTotal - display.offset, label: "sweep")
                }
                display.bar?.update(p.sweepSteps - display.offset, [
                    "variant": "\(p.index + 1)/\(p.count) \(p.variant.id)",
                    "step": "\(p.step)/\(p.maxSteps)"])
            }
        }
        let results: [PaperVariantResult]
        do { results = try experiment.run() } catch let e as PaperExperiment.Interrupted {
            FileHandle.standardError.write(Data("\(e)\n".utf8))
            throw ExitCode(130)
        }
        func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
        let width = max(8, results.map(\.label.count).max() ?? 0)
        print("variant".padding(toLength: width, withPad: " ", startingAt: 0) + pad("BLEU", 9) + pad("experts/token", 15)
              + pad("task acc.", 11))
        for r in results {
            print(r.label.padding(toLength: width, withPad: " ", startingAt: 0) + pad(String(format: "%.2f", r.averageBLEU), 9)
                  + pad(r.expertsPerToken.map { String(format: "%.3f", $0) } ?? "-", 15)
                  + pad(r.taskAccuracy.map { String(format: "%.3f", $0) } ?? "-", 11))
        }
        print("report: \(experiment.options.out)/report.md")
    }
}
