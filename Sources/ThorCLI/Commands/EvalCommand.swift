import ArgumentParser

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Score translations (BLEU) and routing of a checkpoint."
    )
    func run() throws { throw NotBuiltYet(what: "thor eval") }
}
