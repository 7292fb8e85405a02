import ThorTensor
import ThorWire
import ThorExperts
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds on the monotonic clock (`MonotonicClock`, the one clock of every timing).
@inline(__always) public func monotonicSeconds() -> Double { MonotonicClock.seconds() }

/// Nanoseconds since the Unix epoch: a timestamp carried in Heartbeat messages, never used to time anything.
func unixNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// This machine's host name.
func currentHostname() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
    return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

/// Errors of the distributed expert backend, the coordinator and the launcher.
public enum ClusterError: Error, CustomStringConvertible, Equatable {
    /// Workers that did not answer `operation` within the deadline.
    case timeout(operation: String, workers: [String], seconds: Double)
    /// A worker answered `operation` with an Error reply.
    case remote(worker: String, operation: String, code: WireErrorCode, message: String)
    /// A worker answered with the wrong kind of message (or mismatched content).
    case unexpectedReply(worker: String, operation: String, detail: String)
    /// A worker id that is not registered.
    case unknownWorker(String)
    /// A placement that cannot work (no workers, a key placed nowhere, …).
    case placement(String)
    /// Starting or running worker processes failed.
    case launch(String)
    /// A transport failure (socket, bind, send).
    case transport(String)
    /// A worker was declared dead while `operation` waited for it.
    case workerLost(worker: String, operation: String, reason: String)
    /// Experts with no live replica left (every worker hosting them was lost).
    case expertsLost(keys: [ExpertKey], workers: [String], step: Int)
    /// A primary was lost mid-step; its replicas took over, and the step must be rolled
    /// back and redone (shipped-gradient replication: the replicas did not compute it).
    case stepAborted(worker: String, step: Int)

    public var description: String {
        switch self {
        case .timeout(let op, let ws, let s):
            return "timed out after \(s) s waiting for \(ws.count == 1 ? "worker" : "workers") \(ws.joined(separator: ", ")) to answer \(op)"
        case .remote(let w, let op, let code, let m): return "worker \(w) failed \(op): \(m) (code \(code))"
        case .unexpectedReply(let w, let op, let d): return "worker \(w) answered \(op) unexpectedly: \(d)"
        case .unknownWorker(let w): return "no registered worker named \(w)"
        case .placement(let s): return "placement: \(s)"
        case .launch(let s): return "launch: \(s)"
        case .transport(let s): return "transport: \(s)"
        case .workerLost(let w, let op, let r): return "worker \(w) was lost during \(op): \(r)"
        case .stepAborted(let w, let step):
            return "worker \(w) was lost during step \(step); its replicas took over and the step must be redone"
        case .expertsLost(let ks, let ws, let step):
            return "no replica left of \(ks.count) expert\(ks.count == 1 ? "" : "s") (\(ks.map(\.description).joined(separator: " "))) "
                + "at step \(step): every worker hosting them was lost (\(ws.joined(separator: ", ")))"
        }
    }
}

extension ExpertBackendError {
    /// The wire code a worker sends for this error.
    var wireCode: WireErrorCode {
        switch self {
        case .unknownExpert: return .unknownExpert
        case .noPendingForward, .noPendingShardForward: return .noPendingForward
        case .shapeMismatch: return .shapeMismatch
        case .missingState: return .missingState
        case .badShard: return .badShard
        }
    }
}

/// Writes one line to standard error (unbuffered, thread-safe).
func writeStandardError(_ line: String) {
    var s = line + "\n"
    s.withUTF8 { buf in _ = write(2, buf.baseAddress, buf.count) }
}

/// Holds a thread's body across `pthread_create`.
private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Starts a joinable thread running `body`.
func startThread(_ body: @escaping () -> Void) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return thread
}

/// `x` with `digits` decimals (no Foundation in this module).
func decimal(_ x: Double, _ digits: Int = 3) -> String {
    guard x.isFinite else { return "\(x)" }
    var scale = 1
    for _ in 0..<digits { scale *= 10 }
    let n = Int((abs(x) * Double(scale)).rounded())
    let frac = String(n % scale)
    let sign = x < 0 && n > 0 ? "-" : ""
    return digits == 0 ? "\(sign)\(n)" : "\(sign)\(n / scale)." + String(repeating: "0", count: digits - frac.count) + frac
}
