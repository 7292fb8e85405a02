import ArgumentParser

struct BenchMoECommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe",
        abstract: "Plain top-2 against THOR top-2 and THOR top-p layer throughput."
    )
    func run() throws { throw NotBuiltYet(what: "thor bench moe") }
}
