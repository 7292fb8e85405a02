import Foundation
import ThorTensor
import ThorModel
import ThorCluster
import ThorCheckpoint

/// `thor chaos`: a training run with a fault plan against a local cluster of real worker
/// processes, the same run without faults, and their final checkpoints compared tensor by
/// tensor; per fault, how long detection, recovery and rejoin took and how many steps were redone.
public final class ChaosExperiment {
    /// What became of one injected fault.
    public struct FaultReport: Sendable {
        public var fault: InjectedFault
        /// Seconds from the injection to the coordinator noticing (worker declared dead, a request
        /// sent again, a frame refused); nil when there was nothing to notice (e.g. a short delay).
        public var detectionSeconds: Double?
        /// Seconds from detection to the first optimizer step completed after it.
        public var recoverySeconds: Double?
        /// Seconds from detection until the worker (or its replacement) served again with state transferred.
        public var rejoinSeconds: Double?
        /// Steps computed twice because of this fault (a rolled-back step, or steps replayed after a restore).
        public var stepsRedone: Int
        /// The events attributed to it (worker-lost, rejoin, restart, restore, resend).
        public var events: [String]
    }

    public struct Report: Sendable {
        public var scenario: String
        public var workers: Int
        public var replicas: Int
        public var steps: Int
        public var faults: [FaultReport]
        /// Planned faults whose step and phase never came.
        public var unfired: [FaultSpec]
        /// Final checkpoints equal tensor by tensor (weights, Adam moments) and in training state.
        public var bitwiseEqual: Bool
        /// What differed (empty when equal).
        public var differences: [String]
        public var tensorsCompared: Int
        public var faultFreeSeconds: Double
        public var faultySeconds: Double

        public var maxDetection: Double { faults.compactMap(\.detectionSeconds).max() ?? 0 }
        public var maxRecovery: Double { faults.compactMap(\.recoverySeconds).max() ?? 0 }
        public var maxRejoin: Double { faults.compactMap(\.rejoinSeconds).max() ?? 0 }
    }

    public var options: TrainingRun.Options
    public let plan: FaultPlan
    public let scenario: String
    /// Progress lines (stderr).
    public var info: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    /// Where the two runs write (removed afterwards unless `keep`).
    public var directory: String
    public var keep = false
    /// A fault-free run's final checkpoint to compare with (skips run 1; several scenarios can share one).
    public var reference: String?

    /// `options` describe the run (configuration with workers, steps, replicas); the save
    /// directory and fault plan are set per run.
    public init(options: TrainingRun.Options, plan: FaultPlan, scenario: String, directory: String) {
        self.options = options; self.plan = plan; self.scenario = scenario; self.directory = directory
    }

    public func run() throws -> Report {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { if !keep { try? fm.removeItem(atPath: directory) } }
        var base = options
        base.evaluateAtEnd = false
        base.overwrite = true
        base.resume = nil

        // 1. Without faults (unless a reference checkpoint is given).
        var cleanCheckpoint = reference
        var cleanSeconds = 0.0
        if cleanCheckpoint == nil {
            var clean = base
            clean.saveDirectory = directory + "/fault-free"
            clean.faultPlan = nil
            info("chaos: run 1 of 2, without faults (\(base.configuration.training.maxSteps) steps, \(base.configuration.cluster.workers) workers)")
            let t0 = monotonicSeconds()
            let cleanRun = TrainingRun(options: clean)
            cleanRun.info = { [info] in info("  [fault-free] " + $0.trimmingCharacters(in: .newlines)) }
            cleanRun.result = { _ in }
            cleanCheckpoint = try cleanRun.run().lastCheckpoint
            cleanSeconds = monotonicSeconds() - t0
        }

        // 2. With the plan.
        var faulty = base
        faulty.saveDirectory = directory + "/faults"
        faulty.faultPlan = plan
        info("chaos: run 2 of 2, with the scenario's faults")
        var injected: [InjectedFault] = []
        var events: [ClusterEvent] = []
        var resends: [(worker: String, why: String, at: Double)] = []
        var steps: [(step: Int, at: Double)] = []
        let faultyRun = TrainingRun(options: faulty)
        faultyRun.info = { [info] in info("  [faults] " + $0.trimmingCharacters(in: .newlines)) }
        faultyRun.result = { _ in }
        faultyRun.onFault = { injected.append($0) }
        faultyRun.onEvent = { events.append($0) }
        var losses: [WorkerLoss] = []
        faultyRun.onWorkerLoss = { losses.append($0) }
        faultyRun.onResend = { w, _, why, at in resends.append((w, why, at)) }
        faultyRun.onStep = { p in steps.append((p.step, monotonicSeconds())) }
        var unfired: [FaultSpec] = []
        let t1 = monotonicSeconds()
        let faultySummary = try faultyRun.run()
        let faultySeconds = monotonicSeconds() - t1
        if let plan = faultyRun.lastInjector { unfired = plan.unfired }

        // 3. Compare.
        guard let a = cleanCheckpoint, let b = faultySummary.lastCheckpoint else {
            throw TrainingError.checkpoint("chaos: a run wrote no checkpoint")
        }
        let (compared, differences) = try Self.compareCheckpoints(a, b)

        // 4. Attribute events to faults: each fault owns what happened from its injection to the next one's.
        var reports: [FaultReport] = []
        for (k, f) in injected.enumerated() {
            let end = k + 1 < injected.count ? injected[k + 1].injectedAt : .infinity
            let t = f.injectedAt
            var detected: Double?
            var notes: [String] = []
            var redone = 0
            for e in events where e.detectedAt >= t - 1e-6 && e.detectedAt < end {
                notes.append("\(e.kind.rawValue) \(e.worker)")
                switch e.kind {
                case .workerLost:
                    if e.worker == f.worker || detected == nil { detected = min(detected ?? .infinity, e.detectedAt) }
                    if e.stepRedone { redone += 1 }
                default: break
                }
            }
            for l in losses where l.declaredAt >= t && l.declaredAt < end && l.worker == f.worker {
                detected = min(detected ?? .infinity, l.declaredAt)
            }
            for e in events where (e.kind == .restarted || e.kind == .gaveUp) && e.worker == f.worker && e.detectedAt >= t && e.detectedAt < end {
                detected = min(detected ?? .infinity, e.detectedAt)  // the supervisor saw the process exit
            }
            for r in resends where r.at >= t && r.at < end {
                notes.append("resend \(r.worker): \(r.why)")
                if r.worker == f.worker { detected = min(detected ?? .infinity, r.at) }
            }
            // Steps computed again (restore replays) within the window.
            var highest = steps.filter { $0.at < t }.map(\.step).max() ?? 0
            for s in steps where s.at >= t && s.at < end {
                if s.step <= highest { redone += 1 } else { highest = s.step }
            }
            let restored = events.contains { $0.kind == .restored && $0.detectedAt >= t && $0.detectedAt < end }
            if restored, detected == nil {
                detected = events.first { $0.kind == .restored && $0.detectedAt >= t }.map { $0.detectedAt - ($0.recoverySeconds ?? 0) }
            }
            var recovery: Double?, rejoin: Double?
            if let d = detected {
                recovery = steps.first { $0.at > d }.map { $0.at - d }
                // A rejoin belongs to this fault only when the fault cost the worker its place.
                let lostHere = losses.contains { $0.worker == f.worker && $0.declaredAt >= t && $0.declaredAt < end }
                    || events.contains { ($0.kind == .workerLost || $0.kind == .restarted) && $0.worker == f.worker && $0.detectedAt >= t && $0.detectedAt < end }
                if lostHere, let r = events.first(where: { $0.kind == .rejoined && $0.worker == f.worker && $0.detectedAt >= d }) {
                    rejoin = r.detectedAt + (r.recoverySeconds ?? 0) - d
                }
            }
            reports.append(FaultReport(fault: f, detectionSeconds: detected.map { $0 - t }, recoverySeconds: recovery,
                                       rejoinSeconds: rejoin, stepsRedone: redone, events: notes))
        }
        let r = options.configuration.cluster
        return Report(scenario: scenario, workers: r.workers, replicas: faultyRun.lastReplicas ?? 1,
                      steps: options.configuration.training.maxSteps, faults: reports, unfired: unfired,
                      bitwiseEqual: differences.isEmpty, differences: differences, tensorsCompared: compared,
                      faultFreeSeconds: cleanSeconds, faultySeconds: faultySeconds)
    }

    /// Compares two checkpoint directories: every safetensors tensor (dtype, shape, bytes) and
    /// the training state (step, data position, dropout generator). Returns the tensors
    /// compared and what differed.
    public static func compareCheckpoints(_ a: String, _ b: String) throws -> (Int, [String]) {
        let fm = FileManager.default
        func files(_ dir: String) throws -> [String] {
            var out = ["coordinator.safetensors"]
            out += try fm.contentsOfDirectory(atPath: dir + "/experts").filter { $0.hasSuffix(".safetensors") }.sorted().map { "experts/" + $0 }
            return out
        }
        var differences: [String] = []
        let fa = try files(a), fb = try files(b)
        if fa != fb { differences.append("different files: \(Set(fa).symmetricDifference(fb).sorted().joined(separator: ", "))") }
        var compared = 0
        for name in fa where fb.contains(name) {
            let x = try SafeTensorsFile.read(path: a + "/" + name), y = try SafeTensorsFile.read(path: b + "/" + name)
            if x.names != y.names { differences.append("\(name): different tensor names") }
            for t in x.names {
                compared += 1
                guard let ey = y.entries[t], let ex = x.entries[t] else { continue }
                if ex.dtype != ey.dtype || ex.shape != ey.shape || ex.bytes != ey.bytes {
                    differences.append("\(name): tensor \(t) differs")
                }
            }
        }
        let sa = try String(contentsOfFile: a + "/state.json", encoding: .utf8)
        let sb = try String(contentsOfFile: b + "/state.json", encoding: .utf8)
        if sa != sb { differences.append("state.json differs (step, data position or dropout generator)") }
        return (compared, differences)
    }
}

extension ChaosExperiment.Report {
    /// The table: one row per fault.
    public var table: String {
        func s(_ x: Double?) -> String { x.map { String(format: "%.3f", $0) } ?? "-" }
        func pad(_ t: String, _ w: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, w - t.count))
            return left ? t + fill : fill + t
        }
        func row(_ c: [String]) -> String {
            pad(c[0], 40, left: true) + pad(c[1], 10) + pad(c[2], 11) + pad(c[3], 10) + pad(c[4], 8) + pad(c[5], 9)
        }
        var lines = ["scenario \(scenario): \(workers) workers, \(replicas) replicas per expert, \(steps) steps",
                     row(["fault", "detect_s", "recover_s", "rejoin_s", "redone", "bitwise"])]
        for f in faults {
            let kind = f.fault.spec.kind.rawValue + (f.fault.spec.direction == .reply && !f.fault.spec.kind.targetsWorker ? " reply" : "")
            var name = "\(kind) \(f.fault.worker) @\(f.fault.step) \(f.fault.phase.rawValue)"
            if let l = f.fault.layer { name += " L\(l)" }
            if f.fault.skipped != nil { name += " (skipped)" }
            lines.append(row([name, s(f.detectionSeconds), s(f.recoverySeconds), s(f.rejoinSeconds), "\(f.stepsRedone)",
                              bitwiseEqual ? "yes" : "NO"]))
        }
        for u in unfired { lines.append("not fired: \(u)") }
        lines.append("final checkpoints: \(tensorsCompared) tensors compared, " + (bitwiseEqual ? "bitwise equal" : "DIFFERENT: " + differences.prefix(5).joined(separator: "; ")))
        lines.append(String(format: "time: %.1f s without faults, %.1f s with", faultFreeSeconds, faultySeconds))
        return lines.joined(separator: "\n")
    }

    /// One JSON object (for `--json`).
    public var json: [String: Any] {
        func n(_ x: Double?) -> Any { x.map { ($0 * 1e4).rounded() / 1e4 } ?? NSNull() }
        return [
            "scenario": scenario, "workers": workers, "replicas": replicas, "steps": steps,
            "faults_injected": faults.filter { $0.fault.skipped == nil }.count,
            "bitwise_equal": bitwiseEqual, "tensors_compared": tensorsCompared, "differences": differences,
            "max_detection_s": n(maxDetection), "max_recovery_s": n(maxRecovery), "max_rejoin_s": n(maxRejoin),
            "fault_free_s": n(faultFreeSeconds), "faulty_s": n(faultySeconds),
            "unfired": unfired.map(\.description),
            "faults": faults.map { f -> [String: Any] in
                var o: [String: Any] = ["kind": f.fault.spec.kind.rawValue, "worker": f.fault.worker, "step": f.fault.step,
                                        "phase": f.fault.phase.rawValue, "operation": f.fault.operation,
                                        "detection_s": n(f.detectionSeconds), "recovery_s": n(f.recoverySeconds),
                                        "rejoin_s": n(f.rejoinSeconds), "steps_redone": f.stepsRedone, "events": f.events]
                if let l = f.fault.layer { o["layer"] = l }
                if let k = f.fault.skipped { o["skipped"] = k }
                if !f.fault.spec.kind.targetsWorker { o["direction"] = f.fault.spec.direction.rawValue }
                return o
            },
        ]
    }
}
