import XCTest
import ThorTensor
import ThorExperts
import ThorModel
import ThorCluster
import ThorTraining

/// Whole-model training over real `thor worker` processes against the in-process run.
final class DistributedTrainingTests: XCTestCase {
    /// Three steps over `workers` workers give the same losses, coordinator weights and expert
    /// weights as in process, bit for bit.
    func checkDistributedTrainingMatchesInProcess(workers: Int, placement: Placement.Strategy,
                                                  edit: (inout ThorConfiguration) -> Void = { _ in }) throws {
        var c = tinyConfiguration()
        edit(&c)
        let reference = try Setup(c)
        let expected = try (0..<3).map { _ in try reference.trainer.trainStep().loss }
        let expectedState = try reference.snapshot()
        let s = try Setup(c, workers: 0)
        // Same model, experts moved to a local cluster.
        let runtime = try ExpertRuntime(configuration: s.configuration, workers: workers, threads: 1, placement: placement)
        defer { runtime.shutdown() }
        let model = try TranslationModel(configuration: s.configuration, backend: runtime.backend)
        let trainer = try Trainer(model: model, data: s.data)
        let losses = try (0..<3).map { _ in try trainer.trainStep().loss }
        XCTAssertEqual(losses, expected, "\(workers) workers, \(placement)")
        var state: [String: Tensor] = [:]
        for p in model.parameters {
            state[p.name] = p.value; state[p.name + ".m"] = p.m; state[p.name + ".v"] = p.v
        }
        for (_, tensors) in try model.backend.exportState() { for (n, t) in tensors { state[n] = t } }
        assertBitwiseEqual(expectedState, state, "\(workers) workers, \(placement)")
    }

    func testDistributedTrainingOnOneWorkerMatchesInProcessBitForBit() throws {
        try checkDistributedTrainingMatchesInProcess(workers: 1, placement: .roundRobin)
    }

    func testDistributedTrainingOnTwoWorkersMatchesInProcessBitForBit() throws {
        try checkDistributedTrainingMatchesInProcess(workers: 2, placement: .roundRobin)
    }

    func testDistributedTrainingOnThreeWorkersBlockedMatchesInProcessBitForBit() throws {
        try checkDistributedTrainingMatchesInProcess(workers: 3, placement: .blocked)
    }

    /// The `routing.context_norm = match-state` ablation (coordinator side only) keeps the bits too.
    func testDistributedTrainingWithMatchStateContextNormMatchesInProcessBitForBit() throws {
        try checkDistributedTrainingMatchesInProcess(workers: 2, placement: .roundRobin) { $0.routing.contextNorm = .matchState }
    }

    /// A checkpoint written by an in-process run resumes on 2 workers with the same bits.
    func testResumeOnADifferentNumberOfWorkers() throws {
        let c = tinyConfiguration()
        let a = try Setup(c)
        for _ in 0..<2 { try a.trainer.trainStep() }
        let dir = NSTemporaryDirectory() + "thor-resume-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try a.trainer.saveCheckpoint(to: dir)
        let lossesA = try (0..<2).map { _ in try a.trainer.trainStep().loss }

        let ck = try RunCheckpoint(directory: dir)
        let b = try Setup(ck.configuration, checkpoint: ck, workers: 2)
        defer { b.runtime.shutdown() }
        XCTAssertNotNil(b.runtime.cluster)
        let lossesB = try (0..<2).map { _ in try b.trainer.trainStep().loss }
        XCTAssertEqual(lossesA, lossesB)
        assertBitwiseEqual(try a.snapshot(), try b.snapshot(), "resumed on 2 workers")
    }
}
