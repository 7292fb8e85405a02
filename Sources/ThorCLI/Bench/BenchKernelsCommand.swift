import ArgumentParser

struct BenchKernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "GEMM GFLOPS, FFN forward+backward against its GEMM bound, dense training tokens/s."
    )
    func run() throws { throw NotBuiltYet(what: "thor bench kernels") }
}
