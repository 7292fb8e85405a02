import ArgumentParser

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure kernels, the MoE layer and the distributed runtime (release builds).",
        subcommands: [BenchKernelsCommand.self, BenchMoECommand.self, BenchDistributedCommand.self, BenchReplicationCommand.self]
    )
}
