import ArgumentParser

/// The `thor` command line: train, translate, evaluate and benchmark THOR-MoE
/// models, and run expert workers.
public struct ThorCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "thor",
        abstract: "Train and serve THOR-MoE translation models across expert-worker processes.",
        discussion: """
        A coordinator runs embeddings, attention and both routing levels; expert \
        workers host the routed experts and exchange token batches with it over \
        ZeroMQ. See README.md for a tour.
        """,
        subcommands: [TrainCommand.self, TranslateCommand.self, EvalCommand.self,
                      BenchCommand.self, WorkerCommand.self, ClusterCommand.self, KeysCommand.self, DataCommand.self,
                      ExperimentCommand.self]
    )
    public init() {}
}

/// Thrown by a subcommand that is not built yet.
struct NotBuiltYet: Error, CustomStringConvertible {
    let what: String
    var description: String { "\(what) is not available in this build yet" }
}
