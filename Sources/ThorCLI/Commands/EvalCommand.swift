import ArgumentParser
import ThorData

/// `thor eval`: scoring. Subcommands: `bleu` (here); a `checkpoint` subcommand
/// (BLEU per task, experts per token, task accuracy of a trained model) is added
/// to `subcommands` by the evaluation code.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Score translations (BLEU) and routing of a checkpoint.",
        subcommands: [EvalBLEUCommand.self]
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
