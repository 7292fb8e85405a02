import ThorCLI
import ThorTensor
#if canImport(Glibc)
import Glibc
#endif

// OpenBLAS picks its kernels when it loads; make the choice explicit (and the same in
// every process of a cluster) by re-executing once with OPENBLAS_CORETYPE set.
if getenv(BLASCore.environmentVariable) == nil {
    setenv(BLASCore.environmentVariable, BLASCore.preferredCoreType() ?? "", 1)
    if BLASCore.preferredCoreType() != nil {
        execv("/proc/self/exe", CommandLine.unsafeArgv)
    }
}

// A training step allocates and frees its activations and gradients (up to tens of MB each)
// every step. Keep freed memory in the process: glibc otherwise serves the large ones with
// fresh mmap pages (or trims the heap), and every step faults in and zeroes them again.
@_silgen_name("mallopt") func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
_ = mallopt(-3 /* M_MMAP_THRESHOLD */, 32 << 20)  // glibc's largest; blocks above it are still mmapped
_ = mallopt(-1 /* M_TRIM_THRESHOLD */, 1 << 30)

ThorCommand.main()
