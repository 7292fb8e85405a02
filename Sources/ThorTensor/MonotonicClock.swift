#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one clock every timing in thor reads: deadlines, throughput (tokens/s), ETAs,
/// benchmarks. It is `CLOCK_MONOTONIC`, so a wall-clock step (NTP, a user changing the
/// time) never makes a duration negative or a deadline fire early.
public enum MonotonicClock {
    /// Seconds since an arbitrary fixed point (typically boot).
    @inline(__always) public static func seconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Nanoseconds since the same fixed point.
    @inline(__always) public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// Time elapsed since a start on the `MonotonicClock`.
public struct Stopwatch: Sendable {
    public private(set) var start: Double

    /// Starts now.
    public init() { start = MonotonicClock.seconds() }

    /// Seconds since the start.
    public var seconds: Double { MonotonicClock.seconds() - start }

    /// Returns the seconds since the start and starts again from now.
    @discardableResult
    public mutating func lap() -> Double {
        let now = MonotonicClock.seconds()
        defer { start = now }
        return now - start
    }

    /// Seconds `body` takes.
    public static func time(_ body: () throws -> Void) rethrows -> Double {
        let s = Stopwatch()
        try body()
        return s.seconds
    }
}
