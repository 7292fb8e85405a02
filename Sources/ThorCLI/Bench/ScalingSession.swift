import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorWire
import ThorCluster
import ThorTraining

/// One configuration of a scaling sweep kept alive across passes: its local cluster (real
/// worker processes), the remote backend, the harness and every timed step so far.
final class ScalingSession {
    let configuration: ScalingConfiguration
    let cluster: LocalCluster
    let placement: Placement
    let harness: ScalingHarness
    let timings: CoordinatorWorkerPhases
    let cpu: ProcessCPUWorkerPhases
    private(set) var steps: [ScalingStep] = []
    /// Each pass's timed steps (indices into `steps`).
    private var passes: [Range<Int>] = []
    /// Worker CPU seconds over all timed steps, by worker.
    private var cpuSeconds: [String: Double] = [:]

    /// Starts the cluster and runs one warm-up step.
    init(_ c: ScalingConfiguration) throws {
        configuration = c
        cluster = try c.makeCluster()
        do {
            let keys = ScalingHarness.keys(c)
            placement = try Placement(keys: keys, workers: cluster.workerIDs, strategy: .roundRobin, replicas: c.replicas)
            let remote = try RemoteExpertBackend(coordinator: cluster.coordinator, spec: MoEStack.expertSpec(model: c.model, seed: 1),
                                                 placement: placement)
            remote.wireDType = c.wireDType == "bf16" ? .bf16 : .f32
            harness = try ScalingHarness(c, backend: remote)
            cpu = ProcessCPUWorkerPhases(ids: cluster.workerIDs, pids: cluster.processIDs)
            timings = CoordinatorWorkerPhases(coordinator: cluster.coordinator, ids: cluster.workerIDs)
            _ = try harness.step()
        } catch {
            cluster.shutdown()
            throw error
        }
    }

    /// `steps` timed steps (the workers' CPU time is read from /proc around them: clock ticks,
    /// so one step is often shorter than a tick).
    func run(steps count: Int) throws {
        cpu.begin()
        let first = steps.count
        for _ in 0..<count { steps.append(try harness.step(workers: timings)) }
        passes.append(first..<steps.count)
        for w in cpu.end() { cpuSeconds[w.worker, default: 0] += w.cpuSeconds }
    }

    func shutdown() { cluster.shutdown() }

    /// The step that stands for the configuration: each pass's best step (a shared machine only
    /// ever slows a step down), and of those the median (so one lucky or unlucky pass does not
    /// decide it). With one pass, its best step.
    var representative: ScalingStep {
        let bests = passes.filter { !$0.isEmpty }.map { r in steps[r].min { $0.total < $1.total }! }.sorted { $0.total < $1.total }
        return bests.isEmpty ? steps.min { $0.total < $1.total }! : bests[(bests.count - 1) / 2]
    }

    /// The configuration's result: the representative step's phases, the best, median and mean
    /// of all steps next to it.
    func result(cores: Int) -> ScalingResult {
        let c = configuration
        let repeats = steps.count
        let best = representative
        let workerSamples = best.workers.map { w -> WorkerPhaseSample in
            var m = w; m.cpuSeconds = (cpuSeconds[w.worker] ?? 0) / Double(max(1, repeats)); return m
        }
        // The workers' part of wait: per exchange the busiest worker's own time, summed over the
        // exchanges (at most wait: a worker starts computing while the coordinator still sends).
        let wait = best.phases[.wait] ?? 0
        let workerSeconds = best.busiestPerExchange ?? workerSamples.compactMap(\.busy).max()
        let waitCompute = workerSeconds.map { min($0, wait) }
        // Rows per worker and layer (the last step's routing; every step routes the same batch).
        var load = [[Double]](repeating: [Double](repeating: 0, count: c.workers), count: ScalingConfiguration.moeLayers)
        var rowsPerWorker = [Double](repeating: 0, count: c.workers)
        for layer in 0..<ScalingConfiguration.moeLayers {
            let rows = harness.probe.rows[layer] ?? [:]
            let total = Double(max(1, rows.values.reduce(0, +)))
            for (expert, n) in rows {
                guard let host = placement.primary(ExpertKey(layer: layer, expert: expert)),
                      let w = cluster.workerIDs.firstIndex(of: host) else { continue }
                load[layer][w] += Double(n) / total
                rowsPerWorker[w] += Double(n)
            }
        }
        let sorted = steps.map(\.total).sorted()
        let mean = rowsPerWorker.reduce(0, +) / Double(c.workers)
        let perToken = Double(best.assignments) / Double(c.batchTokens * ScalingConfiguration.moeLayers)
        let workload = ScalingWorkload(tokens: c.batchTokens, length: ScalingConfiguration.length, modelDim: c.width,
                                       hiddenDim: c.hiddenDim, experts: c.experts, moeLayers: ScalingConfiguration.moeLayers,
                                       workers: c.workers, replicas: c.replicas, coresPerNode: cores,
                                       wireBytesPerElement: c.wireBytesPerElement, expertsPerToken: perToken,
                                       imbalance: mean > 0 ? (rowsPerWorker.max() ?? 0) / mean : 1)
        let workerCPU = workerSamples.reduce(0) { $0 + $1.cpuSeconds }
        let meanWall = steps.reduce(0) { $0 + $1.total } / Double(steps.count)
        let meanCoordinatorCPU = steps.reduce(0) { $0 + $1.coordinatorCPU } / Double(steps.count)
        return ScalingResult(
            key: c.key, label: c.label, configuration: c, repeats: repeats,
            stepSeconds: best.total, bestStepSeconds: sorted[0], passes: passes.count,
            medianStepSeconds: sorted[sorted.count / 2], meanStepSeconds: meanWall,
            tokensPerSecond: Double(c.batchTokens) / best.total, phases: best.phases,
            coordinatorCpuSeconds: meanCoordinatorCPU, workerCpuSeconds: workerCPU,
            busyProcesses: c.workers, cores: cores, oversubscribed: c.workers > cores, workers: workerSamples,
            waitCompute: waitCompute, waitWire: waitCompute.map { wait - $0 }, workerSeconds: workerSeconds,
            bytesSent: best.bytesSent, bytesReceived: best.bytesReceived, requests: best.requests,
            expertsPerToken: perToken, imbalance: workload.imbalance, load: load, loadAverage: loadAverage1(),
            workload: workload, date: ISO8601DateFormatter().string(from: Date()))
    }
}
