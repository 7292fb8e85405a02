import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Catches SIGTERM, SIGINT and SIGHUP (whichever thread they hit) so a long-running
/// loop can notice them and clean up: workers exit, a coordinator tears its
/// workers down. Keep the instance alive while it should catch signals.
public final class TerminationSignals: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var caught: Int32? = nil
    private var sources: [DispatchSourceSignal] = []

    /// Starts catching SIGTERM, SIGINT and SIGHUP (a closed terminal stops a run the same way; their default action is replaced).
    public init() {
        pthread_mutex_init(&mutex, nil)
        for s in [SIGTERM, SIGINT, SIGHUP] {
            signal(s, SIG_IGN)  // the dispatch source sees it; the default action no longer runs
            let source = DispatchSource.makeSignalSource(signal: s, queue: .global())
            source.setEventHandler { [weak self] in self?.record(s) }
            source.resume()
            sources.append(source)
        }
    }

    deinit {
        for s in sources { s.cancel() }
        pthread_mutex_destroy(&mutex)
    }

    private func record(_ s: Int32) {
        pthread_mutex_lock(&mutex)
        if caught == nil { caught = s }
        pthread_mutex_unlock(&mutex)
    }

    /// The first signal caught, if any.
    public var received: Int32? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return caught
    }
}
