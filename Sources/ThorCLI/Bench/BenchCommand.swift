import ArgumentParser

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure kernels, the MoE layer, the distributed runtime, replication and a whole training step (release builds).",
        subcommands: [BenchKernelsCommand.self, BenchMoECommand.self, BenchDistributedCommand.self, BenchTrainCommand.self,
                      BenchReplicationCommand.self]
    )
}
