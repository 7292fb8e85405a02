#include "thor_kernels.h"

// SplitMix64 is counter based: draw i (from 1) of a generator in state s is mix(s + i·gamma), so
// the draws of a range are independent of each other and the loop vectorizes (64-bit multiplies:
// AVX-512DQ's vpmullq in the x86-64-v4 clone). Integer arithmetic, an exact conversion of a 24-bit
// integer and a multiply by 2^-24 (exact), one comparison: the same bits as
// `RandomGenerator.nextFloat() < rate ? 0 : keep` drawn one by one.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void thor_dropout_mask(float *restrict mask, long count, uint64_t state, float rate, float keep) {
    const uint64_t gamma = 0x9E3779B97F4A7C15ull;
    for (long i = 0; i < count; i++) {
        uint64_t z = state + (uint64_t)(i + 1) * gamma;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        mask[i] = u < rate ? 0.0f : keep;
    }
}
