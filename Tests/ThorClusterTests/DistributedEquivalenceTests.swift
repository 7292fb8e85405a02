import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorCluster

/// Training steps on real `thor worker` processes give the same bits as in-process experts.
final class DistributedEquivalenceTests: XCTestCase {
    let layers = 2, experts = 5

    func spec(_ activation: Activation) -> ExpertSpec {
        ExpertSpec(modelDim: 6, hiddenDim: 10, activation: activation, seed: 31)
    }

    /// forward → backward → squared norms → clipped Adam step, three times, then compare final weights.
    func runSteps(workers: Int, strategy: Placement.Strategy, transport: LocalCluster.Transport,
                  activation: Activation, threads: Int = 1, replicas: Int = 1) throws {
        let what = "\(workers) workers, \(strategy.rawValue), \(transport.rawValue), \(activation), \(replicas) replicas"
        let keys = Placement.allKeys(layers: layers, experts: experts)
        let cluster = try LocalCluster(workers: workers, transport: transport, threadsPerWorker: threads)
        let pids = cluster.processIDs
        defer {
            cluster.shutdown()
            for p in pids { XCTAssertTrue(processIsGone(p), "worker \(p) outlived the test (\(what))") }
        }
        let placement = try Placement(keys: keys, workers: cluster.workerIDs, strategy: strategy, replicas: replicas)
        let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: spec(activation), placement: placement,
                                             requestTimeout: 30)
        let local = InProcessExpertBackend(spec: spec(activation), keys: keys)
        assertSameState(try remote.exportState(), try local.exportState(), "\(what): initial state")

        var rng = RandomGenerator(seed: 2024)
        for step in 1...3 {
            for layer in 0..<layers {
                let inputs = randomBatches(experts: experts, modelDim: 6, rng: &rng)
                assertBitwiseEqual(try remote.forward(layer: layer, batches: inputs, training: true),
                                   try local.forward(layer: layer, batches: inputs, training: true),
                                   "\(what) step \(step) layer \(layer) outputs")
                let grads = inputs.map { b -> ExpertBatch in
                    let g = Tensor(shape: b.tokens.shape)
                    rng.fillUniform(g.pointer, count: g.count, limit: 1)
                    return ExpertBatch(expert: b.expert, tokens: g)
                }
                assertBitwiseEqual(try remote.backward(layer: layer, gradients: grads),
                                   try local.backward(layer: layer, gradients: grads),
                                   "\(what) step \(step) layer \(layer) input gradients")
            }
            let normsRemote = try remote.squaredGradientNorms(), normsLocal = try local.squaredGradientNorms()
            XCTAssertEqual(Set(normsRemote.keys), Set(keys), what)
            for k in keys {
                XCTAssertEqual(normsRemote[k]?.bitPattern, normsLocal[k]?.bitPattern, "\(what) step \(step) norm \(k)")
            }
            let total = keys.reduce(0.0) { $0 + normsLocal[$1]! }
            XCTAssertGreaterThan(total, 0, what)
            let clip = Adam.clipScale(squaredNorm: total, maxNorm: 0.5)
            try remote.step(learningRate: 1e-2, clipScale: clip, step: step)
            try local.step(learningRate: 1e-2, clipScale: clip, step: step)
        }
        let final = try local.exportState()
        assertSameState(try remote.exportState(), final, "\(what): final weights and Adam moments")
        for w in cluster.workerIDs {  // every replica holds the same bits as the primary
            let hosted = try remote.exportState(worker: w)
            XCTAssertEqual(Set(hosted.keys), Set(placement.keys(on: w)), what)
            assertSameState(hosted, final.filter { hosted[$0.key] != nil }, "\(what): state on \(w)")
        }
        // The weights moved: the comparison is not between two untouched initial states.
        let w = final[ExpertKey(layer: 0, expert: 0)]!["moe.0.experts.0.w1"]!
        XCTAssertFalse(w.bitwiseEqual(Expert(key: ExpertKey(layer: 0, expert: 0), spec: spec(activation)).w1.value), what)
        let c = remote.counters
        XCTAssertGreaterThan(c.bytesSent, 0, what)
        XCTAssertGreaterThan(c.bytesReceived, 0, what)
        XCTAssertGreaterThan(c.requests, 0, what)
    }

    // One test per cluster shape, so that one failing scenario does not hide the others.
    func testOneWorkerOverIPCGELU() throws {
        try runSteps(workers: 1, strategy: .roundRobin, transport: .ipc, activation: .gelu)
    }

    func testTwoWorkersRoundRobinOverIPCSwiGLU() throws {
        try runSteps(workers: 2, strategy: .roundRobin, transport: .ipc, activation: .swiglu)
    }

    func testTwoWorkersBlockedOverIPCReLU() throws {
        try runSteps(workers: 2, strategy: .blocked, transport: .ipc, activation: .relu)
    }

    func testThreeWorkersRoundRobinOverIPCReLU() throws {
        try runSteps(workers: 3, strategy: .roundRobin, transport: .ipc, activation: .relu)
    }

    func testThreeWorkersBlockedOverIPCGELUTwoThreads() throws {
        try runSteps(workers: 3, strategy: .blocked, transport: .ipc, activation: .gelu, threads: 2)
    }

    func testOneWorkerOverTCPSwiGLU() throws {
        try runSteps(workers: 1, strategy: .blocked, transport: .tcp, activation: .swiglu)
    }

    func testTwoWorkersRoundRobinOverTCPGELU() throws {
        try runSteps(workers: 2, strategy: .roundRobin, transport: .tcp, activation: .gelu)
    }

    func testThreeWorkersBlockedOverTCPReLU() throws {
        try runSteps(workers: 3, strategy: .blocked, transport: .tcp, activation: .relu)
    }

    func testThreeWorkersRoundRobinOverTCPSwiGLUTwoThreads() throws {
        try runSteps(workers: 3, strategy: .roundRobin, transport: .tcp, activation: .swiglu, threads: 2)
    }

    func testReplicasStayBitIdenticalOverIPC() throws {
        try runSteps(workers: 3, strategy: .roundRobin, transport: .ipc, activation: .gelu, replicas: 2)
    }

    func testReplicasStayBitIdenticalOverTCP() throws {
        try runSteps(workers: 2, strategy: .blocked, transport: .tcp, activation: .swiglu, replicas: 2)
    }

    /// Importing a state into the workers and exporting it back is exact, and
    /// training continues from it exactly like in-process.
    func testImportExportAcrossPlacements() throws {
        let keys = Placement.allKeys(layers: layers, experts: experts)
        let cluster = try LocalCluster(workers: 2, transport: .ipc)
        defer { cluster.shutdown() }
        let s = spec(.gelu)
        let donor = InProcessExpertBackend(spec: ExpertSpec(modelDim: 6, hiddenDim: 10, activation: .gelu, seed: 99), keys: keys)
        let state = try donor.exportState()
        let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: s,
                                             placement: try Placement(keys: keys, workers: cluster.workerIDs, strategy: .blocked))
        try remote.importState(state)
        let rtt = try cluster.coordinator.heartbeat(timeout: 10)
        XCTAssertEqual(Set(rtt.keys), Set(cluster.workerIDs))
        assertSameState(try remote.exportState(), state, "imported state")
        var rng = RandomGenerator(seed: 5)
        let inputs = randomBatches(experts: experts, modelDim: 6, rng: &rng)
        assertBitwiseEqual(try remote.forward(layer: 1, batches: inputs, training: false),
                           try donor.forward(layer: 1, batches: inputs, training: false), "after import")
        // A state missing a tensor is refused and changes nothing.
        var broken = state
        broken[keys[0]]!["moe.0.experts.0.w1.adam_v"] = nil
        XCTAssertThrowsError(try remote.importState(broken)) { e in
            XCTAssertTrue("\(e)".contains("adam_v"), "\(e)")
        }
        assertSameState(try remote.exportState(), state, "after refused import")
    }
}
