import ArgumentParser
import ThorWire

/// This build's version, printed by `thor --version` with the wire protocol version it speaks.
public let thorVersion = "0.13.0"

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
        version: "thor \(thorVersion) (wire protocol version \(thorProtocolVersion))",
        subcommands: [TrainCommand.self, TranslateCommand.self, EvalCommand.self,
                      BenchCommand.self, WorkerCommand.self, CoordinatorCommand.self, ClusterCommand.self, KeysCommand.self, DataCommand.self,
                      ExperimentCommand.self, ChaosCommand.self]
    )
    public init() {}
}
