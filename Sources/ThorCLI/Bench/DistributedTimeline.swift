import ThorWire
import ThorCluster

/// Where one distributed forward + backward of an MoE layer spent its time, in order, from the
/// step's marks (`StepSplit.marks`) and the coordinator's traces of its two exchanges
/// (`ExchangeTrace`). Every segment is wall time on the coordinator's monotonic clock except the
/// workers' service, which they measure themselves (their replies carry it).
///
/// Per pass (forward, backward), in the order they happen:
/// `before` coordinator work before the backend call (forward: task level, gate, router,
/// selection, gather; backward: `w·∂L/∂y` and `∂L/∂w`), `group` the backend's grouping before
/// the exchange, `send` encoding the requests and handing them to libzmq, `wait` until the last
/// reply arrived, `decode` the last reply's decode and the rest of the exchange, `unpack` the
/// backend's checks and reordering after it, `after` coordinator work after the call (forward:
/// combine; backward: scatter of `∂L/∂x`, router/gate/task backward). The wait splits, for the
/// worker that answered last, into its `served` time (decode + queue + compute + encode as it
/// measured them) and `transfer` (the rest: both transfers and every thread hand-off), and for
/// every worker into `compute` and `idle` (how long its reply waited for the last one).
struct DistributedTimeline {
    struct Pass {
        var before = 0.0, group = 0.0, send = 0.0, wait = 0.0, decode = 0.0, unpack = 0.0, after = 0.0
        var lastServed = 0.0, lastTransfer = 0.0, lastCompute = 0.0
        var lastWorker = ""
        /// Per worker: its compute, service, transfer, and idle time after its reply arrived.
        var workers: [String: (compute: Double, served: Double, transfer: Double, idle: Double)] = [:]

        init() {}

        init(start: Double, enter: Double, exit: Double, end: Double, trace: ExchangeTrace?) {
            before = enter - start
            after = end - exit
            guard let t = trace, let last = t.last else { return }
            group = t.started - enter
            send = t.sent - t.started
            wait = last.arrivedAt - t.sent
            decode = t.finished - last.arrivedAt
            unpack = exit - t.finished
            lastWorker = last.worker
            lastServed = last.servedSeconds
            lastTransfer = last.transferSeconds
            lastCompute = last.timings?.compute ?? 0
            for r in t.replies {
                workers[r.worker] = (r.timings?.compute ?? 0, r.servedSeconds, r.transferSeconds, last.arrivedAt - r.arrivedAt)
            }
        }

        var total: Double { before + group + send + wait + decode + unpack + after }

        /// Milliseconds by segment, for JSON.
        var fields: [String: Any] {
            func ms(_ s: Double) -> Double { (s * 10_000).rounded() / 10 }
            var d: [String: Any] = [
                "coordinator_before_ms": ms(before), "backend_group_ms": ms(group), "encode_send_ms": ms(send),
                "wait_ms": ms(wait), "decode_ms": ms(decode), "backend_unpack_ms": ms(unpack),
                "coordinator_after_ms": ms(after), "total_ms": ms(total),
                "last_worker": lastWorker, "last_worker_served_ms": ms(lastServed),
                "last_worker_compute_ms": ms(lastCompute), "last_worker_transfer_ms": ms(lastTransfer),
            ]
            for (w, v) in workers {
                d["worker_\(w)"] = ["compute_ms": ms(v.compute), "served_ms": ms(v.served),
                                    "transfer_ms": ms(v.transfer), "idle_ms": ms(v.idle)]
            }
            return d
        }

        /// One line: segments in order, ms.
        var line: String {
            func ms(_ s: Double) -> String { String(format: "%.1f", s * 1000) }
            var s = "before \(ms(before)) | group \(ms(group)) | send \(ms(send)) | wait \(ms(wait)) "
            s += "(last: \(lastWorker) served \(ms(lastServed)), compute \(ms(lastCompute)), transfer \(ms(lastTransfer))) "
            s += "| decode \(ms(decode)) | unpack \(ms(unpack)) | after \(ms(after)) = \(ms(total)) ms"
            for w in workers.keys.sorted() {
                let v = workers[w]!
                s += "\n      \(w): compute \(ms(v.compute)), served \(ms(v.served)), transfer \(ms(v.transfer)), idle \(ms(v.idle))"
            }
            return s
        }
    }

    var forward = Pass(), backward = Pass()

    init() {}

    init(_ s: StepSplit, traces: [ExchangeTrace]) {
        let m = s.marks
        forward = Pass(start: m.start, enter: m.forwardEnter, exit: m.forwardExit, end: m.forwardEnd,
                       trace: traces.first { $0.phase == .forward })
        backward = Pass(start: m.forwardEnd, enter: m.backwardEnter, exit: m.backwardExit, end: m.end,
                        trace: traces.first { $0.phase == .backward })
    }
}
