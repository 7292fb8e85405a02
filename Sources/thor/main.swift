import ThorCLI
import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

// OpenBLAS reads its settings when it loads: make the kernel choice explicit (and the same in
// every process of a cluster) and shorten its idle threads' spinning (`BLASCore.threadTimeout`)
// by re-executing once with OPENBLAS_CORETYPE and OPENBLAS_THREAD_TIMEOUT set (either one the
// caller set is kept). On a CPU without a preferred kernel set nothing is re-executed.
let needsCoreType = getenv(BLASCore.environmentVariable) == nil
let needsThreadTimeout = getenv(BLASCore.threadTimeoutVariable) == nil
if needsCoreType { setenv(BLASCore.environmentVariable, BLASCore.preferredCoreType() ?? "", 1) }
if needsThreadTimeout { setenv(BLASCore.threadTimeoutVariable, String(BLASCore.threadTimeout), 1) }
if (needsCoreType || needsThreadTimeout) && BLASCore.preferredCoreType() != nil {
    execv("/proc/self/exe", CommandLine.unsafeArgv)
}

// A training step allocates and frees its activations and gradients (up to tens of MB each)
// every step. Keep freed memory in the process: glibc otherwise serves the large ones with
// fresh mmap pages (or trims the heap), and every step faults in and zeroes them again.
@_silgen_name("mallopt") func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
_ = mallopt(-3 /* M_MMAP_THRESHOLD */, 32 << 20)  // glibc's largest; blocks above it are still mmapped
_ = mallopt(-1 /* M_TRIM_THRESHOLD */, 1 << 30)

ThorCommand.main()
