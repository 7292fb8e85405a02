// Exhaustive check of CThorKernels' expf (Sources/CThorKernels/expf.c) against the C library's
// expf: every one of the 2^32 float bit patterns, through the scalar function and through each
// clone of the vector loop (AVX-512, AVX2 + FMA, baseline), compared bit for bit (NaNs too).
// Build and run (scripts/check-expf.sh does both):
//   clang -O3 -fno-math-errno -ffp-contract=off -ISources/CThorKernels/include \
//         scripts/check-expf.c Sources/CThorKernels/expf.c -lm -o check-expf && ./check-expf [clone…]
// Clones: scalar, v4, v3, default (all when none are named; a clone this CPU lacks is skipped).
// Prints the mismatch count per clone (and the first few mismatches); exit status 1 on any.
#include "thor_kernels.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*array_fn)(const float *, float *, long);
// The clones are global symbols (names from clang's target_clones mangling).
extern void thor_expf_array_v4(const float *, float *, long) __asm__("thor_expf_array.arch_x86-64-v4.0");
extern void thor_expf_array_v3(const float *, float *, long) __asm__("thor_expf_array.arch_x86-64-v3.1");
extern void thor_expf_array_default(const float *, float *, long) __asm__("thor_expf_array.default.2");

static void scalar_loop(const float *x, float *out, long n) {
    for (long i = 0; i < n; i++) out[i] = thor_expf(x[i]);
}

static int check(const char *name, array_fn fn) {
    enum { CHUNK = 1 << 20 };
    float *x = malloc(CHUNK * sizeof *x), *got = malloc(CHUNK * sizeof *got), *want = malloc(CHUNK * sizeof *want);
    uint64_t mismatches = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += CHUNK) {
        for (uint32_t i = 0; i < CHUNK; i++) { uint32_t b = (uint32_t)(base + i); memcpy(&x[i], &b, 4); }
        fn(x, got, CHUNK);
        for (uint32_t i = 0; i < CHUNK; i++) want[i] = expf(x[i]);
        if (memcmp(got, want, CHUNK * sizeof *got) != 0) {
            for (uint32_t i = 0; i < CHUNK; i++) {
                uint32_t g, w, b; memcpy(&g, &got[i], 4); memcpy(&w, &want[i], 4); memcpy(&b, &x[i], 4);
                if (g != w && mismatches++ < 5)
                    printf("  %s: x = %a (0x%08x): got 0x%08x, libm 0x%08x\n", name, x[i], b, g, w);
            }
        }
    }
    printf("%-8s %llu mismatches over 2^32 inputs\n", name, (unsigned long long)mismatches);
    fflush(stdout);
    free(x); free(got); free(want);
    return mismatches != 0;
}

int main(int argc, char **argv) {
    __builtin_cpu_init();
    struct { const char *name; array_fn fn; int supported; } clones[] = {
        {"scalar", scalar_loop, 1},
        {"v4", thor_expf_array_v4, __builtin_cpu_supports("x86-64-v4")},
        {"v3", thor_expf_array_v3, __builtin_cpu_supports("x86-64-v3")},
        {"default", thor_expf_array_default, 1},
    };
    int failed = 0;
    for (int c = 0; c < 4; c++) {
        int wanted = argc == 1;
        for (int a = 1; a < argc; a++) wanted |= strcmp(argv[a], clones[c].name) == 0;
        if (!wanted) continue;
        if (!clones[c].supported) { printf("%-8s skipped (CPU lacks it)\n", clones[c].name); continue; }
        failed |= check(clones[c].name, clones[c].fn);
    }
    return failed;
}
