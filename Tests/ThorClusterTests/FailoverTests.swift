import XCTest
import ThorTensor
import ThorExperts
import ThorWire
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Workers killed, stopped and restarted mid-step over real `thor worker` processes:
/// with replicas the run loses no step and ends with the in-process run's bits.
final class FailoverTests: XCTestCase {
    let layers = 2, experts = 5
    let spec = ExpertSpec(modelDim: 6, hiddenDim: 10, activation: .gelu, seed: 31)

    /// forward → backward per layer → squared norms → clipped Adam, on both backends;
    /// `between(step)` runs before each step. Compares every output, gradient and norm.
    func runSteps(_ remote: RemoteExpertBackend, _ local: InProcessExpertBackend, steps: ClosedRange<Int>,
                  _ what: String, between: (Int) throws -> Void = { _ in }) throws {
        var rng = RandomGenerator(seed: 2024)
        for step in 1...steps.upperBound {
            // The same random stream whatever the range, so runs can be split.
            let inputs = (0..<layers).map { _ in randomBatches(experts: experts, modelDim: 6, rng: &rng) }
            let grads = inputs.map { layer in layer.map { b -> ExpertBatch in
                let g = Tensor(shape: b.tokens.shape)
                rng.fillUniform(g.pointer, count: g.count, limit: 1)
                return ExpertBatch(expert: b.expert, tokens: g)
            } }
            guard steps.contains(step) else { continue }
            try between(step)
            // A step is a transaction: when a primary is lost mid-step (shipped-gradient
            // replication) both sides drop it and redo it from the same inputs.
            var attempt = 0
            while true {
                do {
                    try oneStep(step, inputs, grads)
                    break
                } catch ClusterError.stepAborted(_, let s) {
                    XCTAssertEqual(s, step, what)
                    attempt += 1
                    XCTAssertLessThan(attempt, 3, "\(what): step \(step) aborted again")
                    if attempt >= 3 { throw ClusterError.stepAborted(worker: "?", step: step) }
                    try remote.zeroGradients()
                    try local.zeroGradients()
                    redone += 1
                }
            }
        }
        func oneStep(_ step: Int, _ inputs: [[ExpertBatch]], _ grads: [[ExpertBatch]]) throws {
            for layer in 0..<layers {
                assertBitwiseEqual(try remote.forward(layer: layer, batches: inputs[layer], training: true),
                                   try local.forward(layer: layer, batches: inputs[layer], training: true),
                                   "\(what) step \(step) layer \(layer) outputs")
            }
            for layer in (0..<layers).reversed() {
                assertBitwiseEqual(try remote.backward(layer: layer, gradients: grads[layer]),
                                   try local.backward(layer: layer, gradients: grads[layer]),
                                   "\(what) step \(step) layer \(layer) input gradients")
            }
            let nr = try remote.squaredGradientNorms(), nl = try local.squaredGradientNorms()
            XCTAssertEqual(Set(nr.keys), Set(nl.keys), what)
            for k in nl.keys { XCTAssertEqual(nr[k]?.bitPattern, nl[k]?.bitPattern, "\(what) step \(step) norm \(k)") }
            let clip = Adam.clipScale(squaredNorm: nl.keys.sorted().reduce(0.0) { $0 + nl[$1]! }, maxNorm: 0.5)
            try remote.step(learningRate: 1e-2, clipScale: clip, step: step)
            try local.step(learningRate: 1e-2, clipScale: clip, step: step)
        }
    }

    /// Steps redone after a primary was lost (shipped-gradient replication).
    var redone = 0

    /// Final weights and Adam moments equal the in-process run's, on every live replica.
    func assertReplicasMatch(_ remote: RemoteExpertBackend, _ local: InProcessExpertBackend, _ what: String) throws {
        let final = try local.exportState()
        assertSameState(try remote.exportState(), final, "\(what): final weights and Adam moments")
        for w in remote.placement.workers {
            let hosted = try remote.exportState(worker: w)
            assertSameState(hosted, final.filter { hosted[$0.key] != nil }, "\(what): replica state on \(w)")
        }
    }

    func makeCluster(workers: Int, supervise: Bool, mode: ReplicationMode = .shippedGradients) throws -> (LocalCluster, RemoteExpertBackend, InProcessExpertBackend) {
        let keys = Placement.allKeys(layers: layers, experts: experts)
        let cluster = try LocalCluster(workers: workers, transport: .ipc)
        cluster.supervise = supervise
        let placement = try Placement(keys: keys, workers: cluster.workerIDs, strategy: .roundRobin, replicas: 2)
        let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: spec, placement: placement)
        remote.replication = mode
        return (cluster, remote, InProcessExpertBackend(spec: spec, keys: keys))
    }

    /// kill -9 of a worker right before the coordinator sends it the request of a given step
    /// and phase (forward, backward, norms, optimizer step), for both replication modes: the
    /// run loses no step (active: the replicas finish it; shipped gradients: it is rolled
    /// back and redone on the replicas, except in the commit, where the gradients are already
    /// shipped) and ends bit-identical to the in-process run.
    func testKillDuringEachPhaseLosesNoStepAndStaysBitIdentical() throws {
        for mode in ReplicationMode.allCases {
          for (phase, victim) in [(FaultPhase.forward, "w1"), (.backward, "w2"), (.gradNorm, "w0"), (.step, "w1")] {
            let what = "\(mode.rawValue): kill -9 \(victim) during \(phase.rawValue) of step 3"
            redone = 0
            let (cluster, remote, local) = try makeCluster(workers: 3, supervise: false, mode: mode)
            defer { cluster.shutdown() }
            var events: [ClusterEvent] = []
            remote.onEvent = { events.append($0) }
            var killedAt = 0.0
            cluster.coordinator.faultHook = { p in
                if p.step == 3, p.phase == phase, p.worker == victim, killedAt == 0 {
                    killedAt = monotonicSeconds()
                    kill(cluster.processID(of: victim), SIGKILL)
                }
                return .none
            }
            try runSteps(remote, local, steps: 1...5, what)
            XCTAssertGreaterThan(killedAt, 0, what)
            XCTAssertFalse(remote.placement.workers.contains(victim), what)
            try assertReplicasMatch(remote, local, what)
            let lost = events.filter { $0.kind == .workerLost && $0.worker == victim }
            XCTAssertEqual(lost.count, 1, "\(what): \(events)")
            if let e = lost.first {
                XCTAssertEqual(e.step, 3, what)
                XCTAssertTrue(e.reason.contains("signal 9"), "\(what): \(e.reason)")
                XCTAssertFalse(e.moved.isEmpty, "\(what): \(e)")
                XCTAssertLessThan(e.detectedAt - killedAt, 1.0, "\(what): an exited child is seen at once")
                XCTAssertNotNil(e.recoverySeconds)
                // Redone only when the victim was a primary that had not shipped its gradients yet.
                XCTAssertEqual(e.stepRedone, redone > 0, what)
            }
            if mode == .active || phase == .step { XCTAssertEqual(redone, 0, what) }
            if mode == .shippedGradients && phase != .step { XCTAssertEqual(redone, 1, what) }
          }
        }
    }

    /// A SIGSTOPped worker (alive process, silent) is declared dead within ~1.5 s and its
    /// replicas serve; when it continues it registers again, receives state, and serves —
    /// then its partner is killed and it alone serves the shared experts, still bit for bit.
    func testStoppedWorkerIsDetectedThenRejoinsWithStateAndServesAfterItsPartnerDies() throws {
        let (cluster, remote, local) = try makeCluster(workers: 3, supervise: false)
        let pids = cluster.processIDs
        defer {
            for p in pids { kill(p, SIGCONT) }
            cluster.shutdown()
            for p in pids { XCTAssertTrue(processIsGone(p)) }
        }
        var events: [ClusterEvent] = []
        remote.onEvent = { events.append($0) }
        try runSteps(remote, local, steps: 1...2, "before the stop")
        kill(pids[1], SIGSTOP)
        let t0 = monotonicSeconds()
        try runSteps(remote, local, steps: 3...3, "w1 stopped")
        let detected = try XCTUnwrap(events.first { $0.kind == .workerLost && $0.worker == "w1" }, "\(events)")
        XCTAssertLessThanOrEqual(detected.detectedAt - t0, 1.5, "detection took \(detected.detectedAt - t0) s")
        XCTAssertTrue(detected.reason.contains("heartbeats"), detected.reason)
        XCTAssertFalse(remote.placement.workers.contains("w1"))

        // Back: its connection was dropped, so it reconnects and registers again; at the next
        // step boundary it receives the experts short of replicas from a live replica.
        usleep(300_000)
        kill(pids[1], SIGCONT)
        let back = monotonicSeconds() + 10
        while !events.contains(where: { $0.kind == .rejoined && $0.worker == "w1" }) && monotonicSeconds() < back {
            try cluster.coordinator.poll(timeout: 0.1)
            try remote.integrateJoins()
        }
        let rejoin = try XCTUnwrap(events.first { $0.kind == .rejoined && $0.worker == "w1" }, "\(events)")
        XCTAssertLessThan(rejoin.recoverySeconds ?? 99, 5)
        XCTAssertTrue(remote.placement.workers.contains("w1"))
        let shared = remote.placement.keys(on: "w1").filter { remote.placement.hosts[$0]!.contains("w0") }
        XCTAssertFalse(shared.isEmpty, "\(remote.placement)")
        try runSteps(remote, local, steps: 4...4, "after the rejoin")

        // Its partner dies: w1 now alone holds the shared experts.
        kill(pids[0], SIGKILL)
        try runSteps(remote, local, steps: 5...6, "after w0 was killed")
        for k in shared { XCTAssertEqual(remote.placement.hosts[k], ["w1"]) }
        try assertReplicasMatch(remote, local, "stop, rejoin, partner killed")
    }

    /// The local supervisor restarts a killed worker (new incarnation), which receives its
    /// experts' state at a step boundary; a worker that keeps crashing is given up on by name.
    func testSupervisorRestartsAKilledWorkerWhichRejoinsBitIdentical() throws {
        let (cluster, remote, local) = try makeCluster(workers: 3, supervise: true)
        defer { cluster.shutdown(); XCTAssertEqual(childProcesses(), []) }
        var events: [ClusterEvent] = []
        remote.onEvent = { events.append($0) }
        cluster.onEvent = { events.append($0) }
        let first = cluster.processID(of: "w2")
        try runSteps(remote, local, steps: 1...6, "supervised") { step in
            if step == 2 { kill(cluster.processID(of: "w2"), SIGKILL) }
            if step == 3 {  // wait (bounded) for the new incarnation to register
                let end = monotonicSeconds() + 10
                while !cluster.coordinator.joined.contains("w2") && monotonicSeconds() < end { try cluster.coordinator.poll(timeout: 0.05) }
            }
            if step == 5 { kill(cluster.processID(of: "w0"), SIGKILL) }  // w2's partner for some experts
        }
        XCTAssertNotEqual(cluster.processID(of: "w2"), first)
        XCTAssertTrue(events.contains { $0.kind == .restarted && $0.worker == "w2" }, "\(events)")
        XCTAssertTrue(events.contains { $0.kind == .rejoined && $0.worker == "w2" }, "\(events)")
        try assertReplicasMatch(remote, local, "supervised restart")
    }

    /// A worker that dies at start-up every time is restarted within its budget, then given up
    /// on with its exit status and last stderr lines in the message.
    func testCrashLoopingWorkerIsGivenUpOnWithItsStatusAndStderr() throws {
        XCTAssertThrowsError(try LocalCluster(workers: 2, transport: .ipc, registrationTimeout: 20,
                                              extraArguments: ["--max-frame-bytes", "0"])) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("giving up"), m)
            XCTAssertTrue(m.contains("exit status"), m)
            XCTAssertTrue(m.contains("max-frame-bytes"), "the worker's own error line is quoted: \(m)")
        }
        XCTAssertEqual(childProcesses(), [])
    }
}

extension FailoverTests {
    /// Inference (dev evaluation, `thor translate`) goes to one replica; when it is lost the
    /// batch is served by the next replica, with the same bits.
    func testInferenceFailsOverToTheNextReplica() throws {
        let (cluster, remote, local) = try makeCluster(workers: 3, supervise: false)
        defer { cluster.shutdown() }
        var rng = RandomGenerator(seed: 5)
        let x = (0..<experts).map { e -> ExpertBatch in
            let t = Tensor(shape: [3, 6])
            rng.fillUniform(t.pointer, count: t.count, limit: 1)
            return ExpertBatch(expert: e, tokens: t)
        }
        cluster.coordinator.faultHook = { p in
            if p.phase == .forward, p.worker == "w0" { kill(cluster.processID(of: "w0"), SIGKILL) }
            return .none
        }
        assertBitwiseEqual(try remote.forward(layer: 1, batches: x, training: false),
                           try local.forward(layer: 1, batches: x, training: false), "inference with w0 killed")
        XCTAssertFalse(remote.placement.workers.contains("w0"))
    }
}
