import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The last termination signal delivered to the process, and how many were delivered, written
/// by the signal handler (lock-free atomics only: async-signal-safe).
private let lastTerminationSignal = Atomic<Int32>(0)
private let terminationSignalCount = Atomic<Int>(0)

private func recordTerminationSignal(_ s: Int32) {
    lastTerminationSignal.store(s, ordering: .relaxed)
    terminationSignalCount.add(1, ordering: .releasing)
}

/// Catches SIGTERM, SIGINT and SIGHUP (whichever thread they hit) so a long-running
/// loop can notice them and clean up: workers exit, a coordinator tears its
/// workers down. Catching lasts until `restore()` (or the instance's end), which gives
/// the signals back the action they had before: a process that goes on after one
/// training run (`thor experiment paper` runs several) must not be left ignoring Ctrl-C,
/// and the next run must catch them again. (A plain `sigaction` handler, not a dispatch
/// signal source: on Linux a second source for a signal, after the first was cancelled,
/// never fired.)
public final class TerminationSignals: @unchecked Sendable {
    /// The signals caught.
    public static let caughtSignals: [Int32] = [SIGTERM, SIGINT, SIGHUP]
    private let mutex = Mutex<State>(State())

    private struct State {
        /// Signals delivered before this instance started (not ours).
        var baseline = 0
        var caught: Int32?
        /// Each signal's action before this instance replaced it (nil once restored).
        var previous: [(signal: Int32, action: sigaction)]? = []
    }

    /// Starts catching SIGTERM, SIGINT and SIGHUP (a closed terminal stops a run the same way; their default action is replaced).
    public init() {
        mutex.withLock { state in
            state.baseline = terminationSignalCount.load(ordering: .acquiring)
            for s in Self.caughtSignals {
                var catching = sigaction()
                catching.__sigaction_handler.sa_handler = { recordTerminationSignal($0) }
                sigemptyset(&catching.sa_mask)
                catching.sa_flags = SA_RESTART
                var old = sigaction()
                sigaction(s, &catching, &old)
                state.previous?.append((s, old))
            }
        }
    }

    /// Stops catching: each signal gets back the action it had before `init` (for Ctrl-C
    /// usually the default, which ends the process). A signal caught so far stays in
    /// `received`. Safe to call more than once.
    public func restore() {
        mutex.withLock { state in
            latch(&state)
            guard let saved = state.previous else { return }
            state.previous = nil
            for (s, action) in saved.reversed() {
                var a = action
                sigaction(s, &a, nil)
            }
        }
    }

    deinit { restore() }

    /// Records the first signal delivered since `init` while this instance catches.
    private func latch(_ state: inout State) {
        guard state.caught == nil, state.previous != nil,
              terminationSignalCount.load(ordering: .acquiring) > state.baseline else { return }
        state.caught = lastTerminationSignal.load(ordering: .relaxed)
    }

    /// The first signal caught, if any.
    public var received: Int32? {
        mutex.withLock { state in
            latch(&state)
            return state.caught
        }
    }
}
