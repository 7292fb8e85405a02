import ArgumentParser

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a THOR-MoE model."
    )
    func run() throws { throw NotBuiltYet(what: "thor train") }
}
