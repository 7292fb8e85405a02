import ArgumentParser

struct BenchDistributedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "distributed",
        abstract: "In-process MoE layer against coordinator + workers over ipc."
    )
    func run() throws { throw NotBuiltYet(what: "thor bench distributed") }
}
