/* Preloaded by the scripts' --mkl-avx512 (LD_PRELOAD): the MKL that PyTorch's x86 wheels link
 * statically (and export) asks mkl_serv_intel_cpu_true() whether the CPU is an Intel one and,
 * on an AMD CPU, otherwise runs its generic code path (≈ 40 GFLOPS sgemm on this EPYC instead
 * of its AVX-512 kernels). Answering "yes" lets MKL choose its kernels by the CPU's features.
 * Results are the same fp32 computations; only the kernel choice changes. */
int mkl_serv_intel_cpu_true(void) { return 1; }
