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

ThorCommand.main()
