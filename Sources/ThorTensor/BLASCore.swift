import CBLAS
#if canImport(Glibc)
import Glibc
#endif

/// OpenBLAS kernel selection. OpenBLAS picks its kernel set ("core type") when it loads,
/// and different sets give different bits, so every process of a run must use the same one.
/// `OPENBLAS_CORETYPE` is read once at load time: the `thor` executable sets it to
/// `preferredCoreType()` and re-executes itself before any BLAS call (on some virtual CPUs
/// OpenBLAS's own detection finds only a generic core and runs its 2–4× slower SSE3 kernels).
/// `LocalCluster` passes the loaded set to the workers it starts; remote workers are told
/// it in `Assign` and refuse kernels they cannot load (`refusal(requested:…)`).
public enum BLASCore {
    /// Environment variable OpenBLAS reads for its kernel choice.
    public static let environmentVariable = "OPENBLAS_CORETYPE"

    /// Environment variable OpenBLAS reads (at load) for how long an idle worker thread spins
    /// (`sched_yield` in a loop) before it sleeps: 2^N cycles, N clamped to 4…30.
    public static let threadTimeoutVariable = "OPENBLAS_THREAD_TIMEOUT"

    /// The `OPENBLAS_THREAD_TIMEOUT` `thor` sets unless the caller did: 2^20 cycles (≈ 0.5 ms
    /// at 2.1 GHz) instead of OpenBLAS's 2^28 (≈ 0.13 s). With 2^28 the worker thread of the
    /// coordinator's 2-thread GEMMs kept spinning through the parallel regions that follow them
    /// (expert chunks, cross-entropy, Adam, layer norms on our own two threads), a third runnable
    /// thread on two cores: 24 % of `thor bench train`'s samples and ≈ 11 % of its in-process
    /// step time (its 2-worker step measured ≈ 5 % slower; docs/benchmarks.md, stepfast2).
    /// 2^20 still bridges back-to-back GEMMs (the projections)
    /// without a wake-up; 2^4 (sleep at once) and 2^24 measured slower. It only decides when an
    /// idle thread sleeps: results are the same bits whatever it is.
    public static let threadTimeout = 20

    /// The kernel sets `thor` chooses from, best first, with the CPU flags (as in
    /// /proc/cpuinfo) each needs: SkylakeX is OpenBLAS's AVX-512 set, Haswell its AVX2 + FMA set.
    public static let candidates: [(name: String, flags: [String])] = [
        ("SkylakeX", ["avx512f", "avx2", "fma"]),
        ("Haswell", ["avx2", "fma"]),
    ]

    /// The CPU flags of the first processor in `path`, nil when unreadable.
    public static func cpuFlags(cpuinfo path: String = "/proc/cpuinfo") -> Set<String>? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var cap = 0
        defer { free(line) }
        while getline(&line, &cap, f) > 0 {
            let text = String(cString: line!)
            guard text.hasPrefix("flags") else { continue }
            return Set(text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == ":" }).map(String.init))
        }
        return nil
    }

    /// The best kernel set for a CPU with `flags`: `SkylakeX` with AVX-512 (avx512f),
    /// `Haswell` with AVX2 and FMA, else nil (leave OpenBLAS's own detection alone).
    public static func preferredCoreType(flags: Set<String>) -> String? {
        candidates.first { $0.flags.allSatisfy(flags.contains) }?.name
    }

    /// `preferredCoreType(flags:)` for this machine's CPU (nil when /proc/cpuinfo is unreadable).
    public static func preferredCoreType(cpuinfo path: String = "/proc/cpuinfo") -> String? {
        cpuFlags(cpuinfo: path).flatMap { preferredCoreType(flags: $0) }
    }

    /// The kernel set OpenBLAS loaded in this process (e.g. `SkylakeX`, `Haswell`, `Prescott`).
    /// Child processes that must compute the same bits get it as `OPENBLAS_CORETYPE`.
    public static var loaded: String { String(cString: openblas_get_corename()) }

    /// Whether two kernel-set names mean the same set (OpenBLAS compares them case-insensitively).
    public static func same(_ a: String, _ b: String) -> Bool { a.lowercased() == b.lowercased() }

    /// Why a process that loaded `loaded` on a CPU with `cpuFlags` cannot compute with the
    /// `requested` kernel set, or nil when it can (it already loaded that set). OpenBLAS
    /// reads its kernel choice only when it loads, so a running process cannot switch.
    public static func refusal(requested: String, loaded: String, cpuFlags: Set<String>?) -> String? {
        if same(requested, loaded) { return nil }
        if let needs = candidates.first(where: { same($0.name, requested) })?.flags, let cpuFlags {
            let missing = needs.filter { !cpuFlags.contains($0) }
            if !missing.isEmpty {
                return "the coordinator computes with OpenBLAS's \(requested) kernels, which need \(missing.joined(separator: ", ")); "
                    + "this CPU lacks them (this worker loaded \(loaded)). Every process of a run must use the same kernels: "
                    + "start the coordinator with \(environmentVariable)=\(loaded) (and its workers with the same), or run this worker on a CPU with \(missing.joined(separator: ", "))"
            }
        }
        return "the coordinator computes with OpenBLAS's \(requested) kernels but this worker loaded \(loaded) "
            + "(OpenBLAS picks its kernels once, when it loads); restart the worker with \(environmentVariable)=\(requested)"
    }
}
