import Foundation
import ThorTensor
import ThorExperts
import ThorModel
import ThorWire

/// An `ExpertBackend` that forwards to `inner` and records when the MoE layer
/// called it, so a layer step splits into coordinator work before/after the
/// expert call and the expert call itself (for `thor bench distributed`).
final class ProbeBackend: ExpertBackend {
    let inner: ExpertBackend
    var spec: ExpertSpec { inner.spec }
    var shard: Shard { get { inner.shard } set { inner.shard = newValue } }
    /// Seconds inside `inner.forward` / `inner.backward` since the last `reset`.
    private(set) var forwardSeconds = 0.0, backwardSeconds = 0.0
    /// Monotonic times (s) of the last forward call's entry and exit, and the same for backward.
    private(set) var forwardEnter = 0.0, forwardExit = 0.0, backwardEnter = 0.0, backwardExit = 0.0
    /// The batches of the last forward call (what the coordinator shipped).
    private(set) var lastBatches: [ExpertBatch] = []

    init(_ inner: ExpertBackend) { self.inner = inner }

    func reset() { forwardSeconds = 0; backwardSeconds = 0 }

    func forward(layer: Int, batches: [ExpertBatch], training: Bool) throws -> [Tensor] {
        lastBatches = batches
        forwardEnter = now()
        defer { forwardExit = now(); forwardSeconds += forwardExit - forwardEnter }
        return try inner.forward(layer: layer, batches: batches, training: training)
    }
    func backward(layer: Int, gradients: [ExpertBatch]) throws -> [Tensor] {
        backwardEnter = now()
        defer { backwardExit = now(); backwardSeconds += backwardExit - backwardEnter }
        return try inner.backward(layer: layer, gradients: gradients)
    }
    func squaredGradientNorms() throws -> [ExpertKey: Double] { try inner.squaredGradientNorms() }
    func step(learningRate: Float, clipScale: Float, step: Int) throws {
        try inner.step(learningRate: learningRate, clipScale: clipScale, step: step)
    }
    func zeroGradients() throws { try inner.zeroGradients() }
    func exportState() throws -> [ExpertKey: [String: Tensor]] { try inner.exportState() }
    func importState(_ state: [ExpertKey: [String: Tensor]]) throws { try inner.importState(state) }
}

/// Monotonic seconds.
func now() -> Double { MonotonicClock.seconds() }

/// One timed forward+backward of an MoE layer, split at the expert calls:
/// `routing` = forward before the expert call (task level, gate, router, selection, gather)
///           + backward after it (scatter of ∂L/∂x, router/gate/task backward);
/// `combine` = forward after the expert call (weighted sum) + backward before it (w·∂L/∂y, ∂L/∂w);
/// `experts` = inside the backend (forward + backward).
struct StepSplit {
    var total = 0.0, routing = 0.0, combine = 0.0, experts = 0.0
    /// Inside the backend in forward and in backward.
    var expertsForward = 0.0, expertsBackward = 0.0
    /// CPU seconds of this process (all threads) and of `pids` (summed) during the step.
    var coordinatorCPU = 0.0, workerCPU = 0.0
    /// Minor page faults of this process and of `pids` (summed) during the step.
    var coordinatorFaults = 0, workerFaults = 0
    /// Monotonic marks: step start, forward's backend call entered/returned, forward done,
    /// backward's backend call entered/returned, step end.
    var marks = Marks()
    struct Marks { var start = 0.0, forwardEnter = 0.0, forwardExit = 0.0, forwardEnd = 0.0, backwardEnter = 0.0, backwardExit = 0.0, end = 0.0 }

    static func measure(_ layer: FirstMoELayer, _ probe: ProbeBackend, x: Tensor, dy: Tensor, layout: TokenLayout,
                        pids: [Int32] = []) throws -> StepSplit {
        probe.reset()
        let c0 = processCPUSeconds(), w0 = pids.reduce(0) { $0 + processCPUSeconds(pid: $1) }
        let f0 = minorFaults(), wf0 = pids.reduce(0) { $0 + minorFaults(pid: $1) }
        let t0 = now()
        let y = try layer.forward(x, layout: layout, training: true)
        let t1 = now()
        let dx = try layer.backward(dy)
        let t2 = now()
        blackHole((y, dx))
        var s = StepSplit()
        s.coordinatorCPU = processCPUSeconds() - c0
        s.workerCPU = pids.reduce(0) { $0 + processCPUSeconds(pid: $1) } - w0
        s.coordinatorFaults = minorFaults() - f0
        s.workerFaults = pids.reduce(0) { $0 + minorFaults(pid: $1) } - wf0
        s.expertsForward = probe.forwardSeconds
        s.expertsBackward = probe.backwardSeconds
        s.marks = Marks(start: t0, forwardEnter: probe.forwardEnter, forwardExit: probe.forwardExit, forwardEnd: t1,
                        backwardEnter: probe.backwardEnter, backwardExit: probe.backwardExit, end: t2)
        s.total = t2 - t0
        s.experts = probe.forwardSeconds + probe.backwardSeconds
        s.routing = (probe.forwardEnter - t0) + (t2 - probe.backwardExit)
        s.combine = (t1 - probe.forwardExit) + (probe.backwardEnter - t1)
        return s
    }
}

/// Encode and decode of a ForwardRequest through `WireCodec` against `memcpy` of
/// the same tensor bytes, best of `repeats` each, interleaved. Since protocol version 3
/// f32 tensors are neither copied by encode (they are sent from the tensors) nor by decode
/// (received frames are used in place), so f32 ratios above 1 are expected.
struct CodecMeasurement {
    var tensorBytes = 0, frameBytes = 0
    var memcpySeconds = Double.infinity, encodeSeconds = Double.infinity, decodeSeconds = Double.infinity
    /// memcpy to a destination 3 bytes off alignment (where protobuf puts tensor bytes).
    var unalignedMemcpySeconds = Double.infinity
    /// Minor page faults of the last encode and decode.
    var encodeFaults = 0, decodeFaults = 0

    /// Codec throughput over memcpy throughput, where the codec's throughput counts the bytes
    /// it moves: encode and decode each move the tensor bytes once (2·bytes in encode + decode
    /// time), memcpy once: 2·memcpy time / (encode + decode time). 1 = as fast as memcpy.
    var encodeDecodeOverMemcpy: Double { 2 * memcpySeconds / (encodeSeconds + decodeSeconds) }
    /// A full encode + decode against ONE memcpy of the bytes: memcpy time / (encode + decode time)
    /// (≤ 0.5 for any codec that copies once each way).
    var roundTripOverOneMemcpy: Double { memcpySeconds / (encodeSeconds + decodeSeconds) }
    var encodeOverMemcpy: Double { memcpySeconds / encodeSeconds }
    var decodeOverMemcpy: Double { memcpySeconds / decodeSeconds }
    func gbPerSecond(_ seconds: Double) -> Double { Double(tensorBytes) / seconds / 1e9 }

    static func measure(batches: [ExpertBatch], dtype: WireDType, repeats: Int) throws -> CodecMeasurement {
        var m = CodecMeasurement()
        m.tensorBytes = batches.reduce(0) { $0 + $1.tokens.count * 4 }
        let envelope = Envelope(requestID: 1, sender: "coordinator", session: 2,
                                message: .forward(layer: 0, training: true, batches: batches, replyDType: dtype))
        // memcpy of every batch into one destination of the same total size (warm, reused).
        let destination = UnsafeMutableRawPointer.allocate(byteCount: m.tensorBytes + 64, alignment: 64)
        defer { destination.deallocate() }
        memset(destination, 0, m.tensorBytes + 64)
        for round in 0...max(1, repeats) {
            var t0 = now()
            var offset = 0
            for b in batches {
                memcpy(destination + offset, b.tokens.pointer, b.tokens.count * 4)
                offset += b.tokens.count * 4
            }
            blackHole(destination)
            let tCopy = now() - t0
            t0 = now()
            offset = 3
            for b in batches {
                memcpy(destination + offset, b.tokens.pointer, b.tokens.count * 4)
                offset += b.tokens.count * 4
            }
            blackHole(destination)
            let tUnaligned = now() - t0
            var f0 = minorFaults()
            t0 = now()
            let frame = WireCodec.encode(envelope, dtype: dtype)
            let tEncode = now() - t0
            m.encodeFaults = minorFaults() - f0
            f0 = minorFaults()
            t0 = now()
            // As a receiver decodes: the tensor frames are used in place.
            let decoded = try frame.withUnsafeBytes { try WireCodec.decode($0, payloads: frame.payloads) }
            let tDecode = now() - t0
            m.decodeFaults = minorFaults() - f0
            blackHole(decoded)
            m.frameBytes = frame.totalCount
            if round > 0 {
                m.memcpySeconds = min(m.memcpySeconds, tCopy)
                m.unalignedMemcpySeconds = min(m.unalignedMemcpySeconds, tUnaligned)
                m.encodeSeconds = min(m.encodeSeconds, tEncode)
                m.decodeSeconds = min(m.decodeSeconds, tDecode)
            }
        }
        return m
    }
}

/// Per-worker share of the routed tokens (the busiest worker bounds the distributed compute).
func busiestWorkerShare(batches: [ExpertBatch], hostOf: (Int) -> String?) -> Double {
    var rows: [String: Int] = [:]
    var total = 0
    for b in batches {
        rows[hostOf(b.expert) ?? "?", default: 0] += b.tokens.rows
        total += b.tokens.rows
    }
    return Double(rows.values.max() ?? 0) / Double(max(1, total))
}

/// CPU seconds (user + system, all threads) of this process.
func processCPUSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

/// CPU seconds (user + system, all threads) of process `pid` from /proc (clock-tick resolution).
func processCPUSeconds(pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return 0 }
    // Fields after "(comm)": state is field 3; utime, stime are fields 14, 15.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Minor page faults of process `pid` so far (from /proc; 0 when unreadable).
func minorFaults(pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return 0 }
    // Fields after "(comm)": state is field 3, minflt field 10.
    let fields = text[text.index(after: close)...].split(separator: " ")
    return fields.count > 7 ? Int(fields[7]) ?? 0 : 0
}

/// Minor page faults of this process so far.
func minorFaults() -> Int {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return u.ru_minflt
}
