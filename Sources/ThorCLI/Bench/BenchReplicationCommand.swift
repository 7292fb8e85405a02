import Foundation
import ArgumentParser
import ThorTensor
import ThorModel
import ThorCluster
import ThorTraining

struct BenchReplicationCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replication",
        abstract: "Fault-free cost of expert replicas on the quick-start training run.",
        discussion: """
        Trains the quick-start model (or --config) for --steps steps three ways at once: \
        1 replica, 2 replicas with shipped gradients (the default), 2 replicas with active \
        replication, each on its own local cluster of --workers workers. One step of each runs \
        in turn, so the load of a shared machine hits all three alike. Prints the training \
        tokens/s of each (step time only), the ratio against 1 replica, and whether the three \
        end with the same weights and Adam moments, bit for bit. Goal: 2 replicas ≥ 0.85 × 1 replica.
        """
    )

    @Option(help: "Configuration file (default: the quick-start configuration).") var config: String?
    @Option(help: "Steps per variant.") var steps = 100
    @Option(help: "Workers of each local cluster.") var workers = 2

    func validate() throws {
        guard steps >= 1 else { throw ValidationError("--steps must be ≥ 1, got \(steps)") }
        guard workers >= 2 else { throw ValidationError("--workers must be ≥ 2 (2 replicas need 2 workers), got \(workers)") }
    }

    func run() throws {
        var c = try config.map { try ThorConfiguration(contentsOf: $0) } ?? .quickstart
        c.cluster.workers = workers
        let data = try TranslationData.load(c.data, seed: c.training.seed, maxPositions: c.model.maxPositions)
        c.model.vocabularySize = data.tokenizer.vocabularySize
        if c.routing.tasks == 0 { c.routing.tasks = data.tasks.count }
        try c.validate()
        let variants: [(name: String, replicas: Int, mode: ReplicationMode)] = [
            ("1 replica", 1, .shippedGradients), ("2 replicas, shipped gradients", 2, .shippedGradients),
            ("2 replicas, active", 2, .active)]
        var runs: [(ExpertRuntime, Trainer)] = []
        defer { for (r, _) in runs { r.shutdown() } }
        for v in variants {
            var liveness = ExpertRuntime.Liveness()
            liveness.replication = v.mode
            let runtime = try ExpertRuntime(configuration: c, workers: workers, threads: c.cluster.expertThreads,
                                            replicas: v.replicas, liveness: liveness)
            let model = try TranslationModel(configuration: c, backend: runtime.backend)
            runs.append((runtime, try Trainer(model: model, data: data)))
        }
        var seconds = [Double](repeating: 0, count: runs.count), tokens = [Int](repeating: 0, count: runs.count)
        for s in 1...steps {
            for (i, (_, trainer)) in runs.enumerated() {
                let t0 = Date()
                let r = try trainer.trainStep()
                if s > 5 { seconds[i] += Date().timeIntervalSince(t0); tokens[i] += r.tokens }  // after warm-up
            }
            if s % 20 == 0 { FileHandle.standardError.write(Data("step \(s)/\(steps)\n".utf8)) }
        }
        func state(_ t: Trainer) throws -> [String: Tensor] {
            var s: [String: Tensor] = [:]
            for p in t.model.parameters { s[p.name] = p.value; s[p.name + ".m"] = p.m; s[p.name + ".v"] = p.v }
            for (_, ts) in try t.model.backend.exportState() { for (n, x) in ts { s[n] = x } }
            return s
        }
        let reference = try state(runs[0].1)
        let rate0 = Double(tokens[0]) / seconds[0]
        print("variant                          tokens/s   vs 1 replica   final state")
        for (i, v) in variants.enumerated() {
            let rate = Double(tokens[i]) / seconds[i]
            let other = try state(runs[i].1)
            let equal = Set(other.keys) == Set(reference.keys) && reference.allSatisfy { other[$0.key]!.bitwiseEqual($0.value) }
            print(v.name.padding(toLength: 32, withPad: " ", startingAt: 0)
                  + String(format: " %8.0f   %11.3f   %@", rate, rate / rate0, equal ? "bitwise equal" : "DIFFERENT"))
        }
    }
}
