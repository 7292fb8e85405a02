import ArgumentParser

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run an expert worker that hosts routed experts."
    )
    func run() throws { throw NotBuiltYet(what: "thor worker") }
}
