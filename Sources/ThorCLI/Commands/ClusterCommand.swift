import ArgumentParser

struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Start a local cluster of a coordinator and expert workers."
    )
    func run() throws { throw NotBuiltYet(what: "thor cluster") }
}
