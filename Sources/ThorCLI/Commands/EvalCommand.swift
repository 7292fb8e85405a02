import ArgumentParser
import ThorData
import ThorTraining
import Foundation

/// `thor eval`: scoring. Subcommands: `bleu` (here); a `checkpoint` subcommand
/// (BLEU per task, experts per token, task accuracy of a trained model) is added
/// to `subcommands` by the evaluation code.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Score translations (BLEU) and routing of a checkpoint.",
        subcommands: [EvalBLEUCommand.self, EvalCheckpointCommand.self]
    )
}

/// `thor eval bleu --ref REF --hyp HYP`: corpus BLEU exactly as sacreBLEU 2.6.0.
struct EvalBLEUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bleu",
        abstract: "Corpus BLEU of a hypothesis file against a reference file, as sacreBLEU 2.6.0.",
        discussion: """
        One segment per line, UTF-8. Same numbers as `sacrebleu REF -i HYP -m bleu` \
        (13a tokenizer, mixed case, exp smoothing). Prints the score line and the signature; \
        --json prints sacreBLEU's JSON instead (width 1 by default, like sacrebleu).
        """
    )

    @Option(name: .long, help: "Reference file (one sentence per line).")
    var ref: String

    @Option(name: .long, help: "Hypothesis file (one sentence per line).")
    var hyp: String

    @Option(name: .long, help: "Decimals of the score (sacreBLEU's -w).")
    var width: Int?

    @Flag(name: .long, help: "Print sacreBLEU's JSON output.")
    var json = false

    func validate() throws {
        if let width, !(0...10).contains(width) { throw ValidationError("--width must be in 0...10") }
    }

    func run() throws {
        let refs = try SacreBLEU.readLines(path: ref)
        let hyps = try SacreBLEU.readLines(path: hyp)
        let score = try SacreBLEU.corpusScore(hypotheses: hyps, references: refs)
        if json {
            print(score.json(width: width ?? 1))
        } else {
            print(score.line(width: width ?? 2))
            print(SacreBLEU.signature)
        }
    }
}

/// `thor eval checkpoint`: BLEU per task, experts per token, task accuracy and the
/// task × predicted-task matrix of a trained model on its test set (or a corpus file).
struct EvalCheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Translate a test set with a checkpoint and report BLEU and routing per task.",
        discussion: """
        Without --test, uses the test set of the checkpoint's configuration (the built-in \
        corpus is regenerated from its seed). Reports BLEU per task and averaged \
        (sacreBLEU 2.6, 13a), experts per token per task (the paper's Table 7), \
        task-prediction accuracy (Appendix A), the task × predicted-task matrix \
        (Appendix C) and, per MoE layer, the task × expert usage matrix (the share of each \
        task's tokens that each expert serves; --json: `expert_usage`). Routing figures come \
        from a teacher-forced pass over the set. --gold-task routes a thor-topp model with \
        the gold task instead of the predicted one.
        """)

    @Option(help: "Checkpoint directory (e.g. runs/latest/checkpoint-last).")
    var checkpoint: String

    @Option(help: "Test corpus file (`task<TAB>source<TAB>target` lines); default: the configuration's test set.")
    var test: String?

    @Option(help: "Beam size (default: evaluation.beam_size of the checkpoint's configuration).")
    var beam: Int?

    @Option(help: "Expert-worker processes (0: experts in this process).")
    var workers: Int = 0

    @Option(help: "Write the translations here, one per line, in test-set order.")
    var hypothesesOut: String?

    @Flag(help: "Print the figures as one JSON object.")
    var json = false

    @Flag(help: "Route a thor-topp model with the gold task's embedding (r = E_task[gold]) instead of the predicted mixture: what wrong task predictions cost.")
    var goldTask = false

    func run() throws {
        let translator = try Translator(checkpoint: checkpoint, workers: workers, goldTask: goldTask)
        defer { translator.runtime.shutdown() }
        let c = translator.model.configuration
        let testPairs: [TranslationPair], testCorpus: EncodedCorpus
        if let test {
            testPairs = try CorpusFile.read(path: test, tasks: translator.tasks)
            testCorpus = try EncodedCorpus(pairs: testPairs, tokenizer: translator.tokenizer, tasks: translator.tasks)
        } else {
            let data = try TranslationData.load(c.data, seed: c.training.seed, maxPositions: c.model.maxPositions,
                                                tokenizer: translator.tokenizer, tasks: translator.tasks)
            (testPairs, testCorpus) = (data.testPairs, data.test)
        }
        var options = DecodingOptions(c)
        if let beam { options.beamSize = beam }
        let report = try Evaluator.evaluate(translator.model, tokenizer: translator.tokenizer, corpus: testCorpus,
                                            pairs: testPairs, options: options)
        if let hypothesesOut {
            try report.hypotheses.map { $0 + "\n" }.joined().write(toFile: hypothesesOut, atomically: true, encoding: .utf8)
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: report.record, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(report.table(title: "\(checkpoint) on \(test ?? "its test set") (\(report.sentences) sentences, beam \(options.beamSize))"), terminator: "")
        }
    }
}
