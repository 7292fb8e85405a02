import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Work split over a few threads, with results in index order.
public enum Parallel {
    /// Online processors of this machine (at least 1): the thread count of elementwise work
    /// whose result does not depend on how it is split (e.g. the coordinator's Adam).
    public static let processors: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// `body(i)` for `i < count` on up to `threads` threads; `results[i] = body(i)`.
    /// Each index runs on exactly one thread, so results never depend on scheduling
    /// as long as `body(i)` touches only its own data.
    public static func map<T>(_ count: Int, threads: Int, _ body: (Int) -> T) -> [T] {
        if threads <= 1 || count <= 1 { return (0..<count).map(body) }
        return withoutActuallyEscaping(body) { body in
            let slots = UnsafeMutableBufferPointer<T?>.allocate(capacity: count)
            slots.initialize(repeating: nil)
            defer { slots.deinitialize(); slots.deallocate() }
            let counter = AtomicCounter()
            nonisolated(unsafe) let run = body
            nonisolated(unsafe) let out = slots
            DispatchQueue.concurrentPerform(iterations: min(threads, count)) { _ in
                while true {
                    let i = counter.next()
                    if i >= count { return }
                    out[i] = run(i)
                }
            }
            return slots.map { $0! }
        }
    }
}

extension Parallel {
    /// Splits `0..<count` into at most `threads` contiguous ranges (each at least
    /// `minimumChunk` long) and runs `body` on them concurrently. Each index is in
    /// exactly one range; use it for elementwise work whose result does not depend
    /// on how it is split.
    public static func forEachRange(_ count: Int, threads: Int, minimumChunk: Int = 1,
                                    _ body: (Range<Int>) -> Void) {
        let chunks = max(1, min(threads, count / max(1, minimumChunk)))
        if chunks <= 1 { if count > 0 { body(0..<count) }; return }
        withoutActuallyEscaping(body) { body in
            nonisolated(unsafe) let run = body
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                run((c * count / chunks)..<((c + 1) * count / chunks))
            }
        }
    }
}

/// A mutex-protected counter handing out 0, 1, 2, …
final class AtomicCounter: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var value = 0
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func next() -> Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        let v = value
        value += 1
        return v
    }
}
