import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorCluster

/// Expert batches large enough to be cut into several row chunks and gradient tiles
/// (`ExpertPartition.standard`) give the same bits on workers (2 threads each) as in one
/// process (1 thread), whatever the placement: the partition depends only on each expert's rows.
final class ChunkedDistributedTests: XCTestCase {
    func testSkewedBatchesOnWorkersMatchInProcessBitForBit() throws {
        let spec = ExpertSpec(modelDim: 6, hiddenDim: 300, activation: .swiglu, seed: 8)
        let keys = Placement.allKeys(layers: 1, experts: 4)
        let cluster = try LocalCluster(workers: 2, transport: .ipc, threadsPerWorker: 2)
        let pids = cluster.processIDs
        defer {
            cluster.shutdown()
            for p in pids { XCTAssertTrue(processIsGone(p), "worker \(p) outlived the test") }
        }
        let placement = try Placement(keys: keys, workers: cluster.workerIDs, strategy: .blocked)
        let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: spec, placement: placement, requestTimeout: 60)
        let local = InProcessExpertBackend(spec: spec, keys: keys, threads: 1)
        var rng = RandomGenerator(seed: 5)
        for step in 1...2 {
            // Expert 1 gets most tokens: 3 row chunks of 256 and a remainder.
            let inputs = [700, 20, 0, 9].enumerated().map { e, rows -> ExpertBatch in
                let t = Tensor(shape: [rows, 6]); rng.fillNormal(t.pointer, count: t.count, std: 1)
                return ExpertBatch(expert: [1, 0, 2, 3][e], tokens: t)
            }
            assertBitwiseEqual(try remote.forward(layer: 0, batches: inputs, training: true),
                               try local.forward(layer: 0, batches: inputs, training: true), "step \(step) outputs")
            let grads = inputs.map { b -> ExpertBatch in
                let g = Tensor(shape: b.tokens.shape); rng.fillUniform(g.pointer, count: g.count, limit: 0.1)
                return ExpertBatch(expert: b.expert, tokens: g)
            }
            assertBitwiseEqual(try remote.backward(layer: 0, gradients: grads),
                               try local.backward(layer: 0, gradients: grads), "step \(step) input gradients")
            let nr = try remote.squaredGradientNorms(), nl = try local.squaredGradientNorms()
            for k in keys { XCTAssertEqual(nr[k]?.bitPattern, nl[k]?.bitPattern, "step \(step) norm \(k)") }
            try remote.step(learningRate: 1e-2, clipScale: 0.7, step: step)
            try local.step(learningRate: 1e-2, clipScale: 0.7, step: step)
        }
        assertSameState(try remote.exportState(), try local.exportState(), "final weights and Adam moments")
    }
}
