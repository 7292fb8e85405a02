import ThorTensor
import ThorWire
import ThorExperts
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds on the monotonic clock (`MonotonicClock`, the one clock of every timing).
@inline(__always) func monotonicSeconds() -> Double { MonotonicClock.seconds() }

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
        }
    }
}

extension ExpertBackendError {
    /// The wire code a worker sends for this error.
    var wireCode: WireErrorCode {
        switch self {
        case .unknownExpert: return .unknownExpert
        case .noPendingForward: return .noPendingForward
        case .shapeMismatch: return .shapeMismatch
        case .missingState: return .missingState
        }
    }
}

/// Writes one line to standard error (unbuffered, thread-safe).
func writeStandardError(_ line: String) {
    var s = line + "\n"
    s.withUTF8 { buf in _ = write(2, buf.baseAddress, buf.count) }
}
