import ArgumentParser

struct TranslateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "translate",
        abstract: "Translate sentences with a trained checkpoint."
    )
    func run() throws { throw NotBuiltYet(what: "thor translate") }
}
