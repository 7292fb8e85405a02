import Foundation
import ThorTensor
import ThorWire
import ThorCluster

/// The figures `thor train --metrics-port` serves, rendered in the Prometheus text exposition
/// format (version 0.0.4). Counters (`_total`) are running totals since the run started;
/// gauges hold the last step's or the last log window's value. Metric names and labels are
/// listed in docs/configuration.md ("Live metrics").
public struct MetricsExposition {
    public var step = 0
    public var maxSteps = 0
    /// Loss terms of the last step by name (`total`, `l_mt`, `l_task`, `l_task_lb`, `l_tok_lb`, `l_dyn`).
    public var losses: [String: Double] = [:]
    public var gradientNorm = 0.0
    public var learningRate = 0.0
    public var tokensTotal = 0
    /// Of the last log window (nil before the first).
    public var tokensPerSecond: Double?
    public var expertsPerToken: Double?
    /// Seconds per phase since the run started, and the last window's mean per step.
    public var phases = PhaseTotals()
    public var phasesPerStep: PhaseTotals?
    /// Each worker's own timings since the run started.
    public var workerTotals: [String: WorkerTotals] = [:]
    /// Every registered worker: id, whether it is alive, its incarnation.
    public var workers: [(id: String, up: Bool, incarnation: UInt64)] = []
    /// Token→expert assignments kept in the last log window, `[layer][expert]`.
    public var expertLoad: [[Double]]?

    public init() {}

    /// The document.
    public var text: String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
            out += name
            if !labels.isEmpty {
                out += "{" + labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",") + "}"
            }
            out += " " + Self.number(value) + "\n"
        }
        family("thor_train_step", "gauge", "Optimizer steps done.")
        sample("thor_train_step", [], Double(step))
        family("thor_train_max_steps", "gauge", "Optimizer steps the run will do (training.max_steps).")
        sample("thor_train_max_steps", [], Double(maxSteps))
        family("thor_train_loss", "gauge", "Loss terms of the last step (term: total, l_mt, l_task, l_task_lb, l_tok_lb, l_dyn).")
        for k in losses.keys.sorted() { sample("thor_train_loss", [("term", k)], losses[k]!) }
        family("thor_train_grad_norm", "gauge", "Global gradient norm of the last step (before clipping).")
        sample("thor_train_grad_norm", [], gradientNorm)
        family("thor_train_learning_rate", "gauge", "Learning rate of the last step.")
        sample("thor_train_learning_rate", [], learningRate)
        family("thor_train_tokens_total", "counter", "Non-pad source + target tokens trained on.")
        sample("thor_train_tokens_total", [], Double(tokensTotal))
        if let r = tokensPerSecond {
            family("thor_train_tokens_per_second", "gauge", "Training throughput of the last log window.")
            sample("thor_train_tokens_per_second", [], r)
        }
        if let e = expertsPerToken {
            family("thor_experts_per_token", "gauge", "Activated experts per non-pad token, last log window.")
            sample("thor_experts_per_token", [], e)
        }
        family("thor_phase_seconds_total", "counter", "Coordinator seconds per phase of the training steps (see docs/configuration.md).")
        for p in Phase.allCases { sample("thor_phase_seconds_total", [("phase", p.name)], phases[p]) }
        if let w = phasesPerStep {
            family("thor_phase_seconds_per_step", "gauge", "Mean coordinator seconds per step and phase, last log window.")
            for p in Phase.allCases { sample("thor_phase_seconds_per_step", [("phase", p.name)], w[p]) }
        }
        if !workerTotals.isEmpty {
            family("thor_worker_phase_seconds_total", "counter",
                   "Seconds each worker reports for the requests it served (phase: decode, queue, compute, compute_cpu, encode).")
            for w in workerTotals.keys.sorted() {
                let t = workerTotals[w]!.timings
                for (name, v) in [("decode", t.decode), ("queue", t.queue), ("compute", t.compute),
                                  ("compute_cpu", t.computeCPU), ("encode", t.encode)] {
                    sample("thor_worker_phase_seconds_total", [("worker", w), ("phase", name)], v)
                }
            }
            family("thor_worker_replies_total", "counter", "Replies received from each worker.")
            for w in workerTotals.keys.sorted() { sample("thor_worker_replies_total", [("worker", w)], Double(workerTotals[w]!.replies)) }
        }
        if !workers.isEmpty {
            family("thor_worker_up", "gauge", "1 while a registered worker is alive (heard within its liveness window), else 0.")
            for w in workers { sample("thor_worker_up", [("worker", w.id), ("incarnation", String(w.incarnation, radix: 16))], w.up ? 1 : 0) }
        }
        if let load = expertLoad {
            family("thor_expert_load", "gauge", "Token-to-expert assignments kept per MoE layer and expert, last log window.")
            for (l, row) in load.enumerated() {
                for (e, v) in row.enumerated() { sample("thor_expert_load", [("layer", String(l)), ("expert", String(e))], v) }
            }
        }
        return out
    }

    /// A label value with `\`, `"` and newlines escaped.
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    /// A sample value: Prometheus spells the non-finite ones NaN, +Inf, -Inf.
    static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}
