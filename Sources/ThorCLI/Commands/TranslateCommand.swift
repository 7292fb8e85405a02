import ArgumentParser
import Foundation
import ThorTraining

struct TranslateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "translate",
        abstract: "Translate sentences with a trained checkpoint.",
        discussion: """
        Reads one sentence per line from --input (default: stdin) and writes one translation \
        per line to --output (default: stdout), in input order. A line may be \
        `task<TAB>source` to give its task (the gold and hard variants need one; THOR \
        variants predict it). Sentences are translated in batches with a KV cache and an \
        incrementally updated context; --beam 1 is greedy search.
        """)

    @Option(help: "Checkpoint directory (e.g. runs/latest/checkpoint-last).")
    var checkpoint: String

    @Option(help: "Input file (default: stdin).")
    var input: String?

    @Option(help: "Output file (default: stdout).")
    var output: String?

    @Option(help: "Beam size (1: greedy).")
    var beam: Int = 4

    @Option(help: "Beam-search length penalty α (score / length^α).")
    var lengthPenalty: Float = 1

    @Option(help: "Longest translation in tokens.")
    var maxLength: Int = 128

    @Option(help: "Padded tokens per batch.")
    var maxTokens: Int = 4096

    @Option(help: "Task of every line without its own `task<TAB>` prefix.")
    var task: String?

    @Option(help: "Expert-worker processes (0: experts in this process).")
    var workers: Int = 0

    func validate() throws {
        guard beam >= 1 else { throw ValidationError("--beam must be ≥ 1, got \(beam)") }
        guard maxLength >= 1 else { throw ValidationError("--max-length must be ≥ 1, got \(maxLength)") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be ≥ 1, got \(maxTokens)") }
        guard workers >= 0 else { throw ValidationError("--workers must be ≥ 0, got \(workers)") }
    }

    func run() throws {
        let text: String
        if let input {
            guard let data = FileManager.default.contents(atPath: input) else {
                throw ValidationError("cannot read --input \(input)")
            }
            guard let s = String(data: data, encoding: .utf8) else { throw ValidationError("\(input) is not UTF-8") }
            text = s
        } else {
            text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        }
        var lines = text.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        var sources: [String] = [], tasks: [String?] = []
        for line in lines {
            if let tab = line.firstIndex(of: "\t") {
                tasks.append(String(line[..<tab])); sources.append(String(line[line.index(after: tab)...]))
            } else {
                tasks.append(task); sources.append(line)
            }
        }
        let translator = try Translator(checkpoint: checkpoint, workers: workers)
        defer { translator.runtime.shutdown() }
        let options = DecodingOptions(beamSize: beam, lengthPenalty: lengthPenalty, maxOutputLength: maxLength,
                                      maxTokens: maxTokens)
        let out = try translator.translate(sources, tasks: tasks, options: options)
        let joined = out.map { $0 + "\n" }.joined()
        if let output {
            try joined.write(toFile: output, atomically: true, encoding: .utf8)
        } else {
            FileHandle.standardOutput.write(Data(joined.utf8))
        }
    }
}
