import XCTest
import Foundation
import ThorTensor
import ThorModel
import ThorCheckpoint
import ThorTraining

/// `routing.task_warmup_steps = W` in training: steps 1…W run without the task level's routing
/// (no `L_task_lb`, task routers unchanged), steps from W + 1 on with it; a run resumed inside
/// the warm-up continues bit for bit.
final class TaskWarmupTrainingTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "thor-warmup-\(getpid())-\(UInt64.random(in: 0..<1 << 40))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: scratch) }

    func configuration(warmup: Int) -> ThorConfiguration {
        var c = tinyConfiguration()
        c.routing.taskWarmupSteps = warmup
        return c
    }

    func testTaskLevelIsOffForTheFirstStepsThenOn() throws {
        let s = try Setup(configuration(warmup: 3))
        let taskRouters = s.model.parameters.filter { $0.name.hasSuffix("task_router.w") }
        XCTAssertEqual(taskRouters.count, 2)
        let initial = taskRouters.map { Tensor(copying: $0.value) }
        for step in 1...3 {
            let r = try s.trainer.trainStep()
            XCTAssertNil(r.auxiliary.taskBalance, "step \(step): L_task_lb inside the warm-up")
            XCTAssertNotNil(r.auxiliary.task, "step \(step): the task predictor trains during the warm-up")
            XCTAssertTrue(s.model.moe.layers.allSatisfy { $0.lastTaskRouting == nil }, "step \(step)")
        }
        for (p, t) in zip(taskRouters, initial) { XCTAssertTrue(p.value.bitwiseEqual(t), "\(p.name) moved during the warm-up") }
        XCTAssertTrue(s.model.moe.layers.allSatisfy(\.taskLevelActive), "after W steps a dev evaluation routes with the task level")
        for step in 4...5 {
            let r = try s.trainer.trainStep()
            XCTAssertNotNil(r.auxiliary.taskBalance, "step \(step): L_task_lb after the warm-up")
            XCTAssertTrue(s.model.moe.layers.allSatisfy { $0.lastTaskRouting != nil }, "step \(step)")
        }
        XCTAssertTrue(zip(taskRouters, initial).contains { !$0.value.bitwiseEqual($1) }, "the task routers train after the warm-up")
        // Steps inside the warm-up differ from the same run without it (the option does something).
        let plain = try Setup(configuration(warmup: 0))
        let withWarmup = try Setup(configuration(warmup: 3))
        XCTAssertNotEqual(try plain.trainer.trainStep().loss, try withWarmup.trainer.trainStep().loss)
    }

    /// A checkpoint saved inside the warm-up resumes with the task level off, crosses the end of
    /// the warm-up and ends with the uninterrupted run's bits.
    func testResumeInsideTheWarmupIsBitIdentical() throws {
        let c = configuration(warmup: 3)
        let a = try Setup(c)
        for _ in 0..<2 { try a.trainer.trainStep() }
        let dir = scratch + "/ck"
        try a.trainer.saveCheckpoint(to: dir)
        let lossesA = try (0..<3).map { _ in try a.trainer.trainStep().loss }

        let ck = try RunCheckpoint(directory: dir)
        XCTAssertEqual(ck.configuration.routing.taskWarmupSteps, 3)
        let b = try Setup(ck.configuration, checkpoint: ck)
        XCTAssertTrue(b.model.moe.layers.allSatisfy { !$0.taskLevelActive }, "resumed at step 2 of a 3-step warm-up")
        let lossesB = try (0..<3).map { _ in try b.trainer.trainStep().loss }
        XCTAssertEqual(lossesA, lossesB)
        assertBitwiseEqual(try a.snapshot(), try b.snapshot(), "run resumed inside the warm-up")
    }
}
