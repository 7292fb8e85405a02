#ifndef THOR_KERNELS_H
#define THOR_KERNELS_H

#include <stdint.h>

/// Elementwise kernels that Swift does not vectorize well, compiled as plain C with -O3
/// (-fno-math-errno so that sqrtf becomes a vector square root; -ffp-contract=off so that no
/// multiply and add fuse unless the source calls `fma`, as expf.c does where glibc fuses). Every
/// operation is a single correctly rounded IEEE operation in the order written, so the results
/// have the same bits as the same expression in Swift (or, for `thor_expf`, as glibc's `expf`),
/// whichever clone (AVX-512, AVX2 + FMA, baseline) the loader picks.

/// One Adam step on `count` elements (Kingma & Ba with bias correction, AdamW decay):
///   g' = clip·g;  m = b1·m + (1−b1)·g';  v = b2·v + (1−b2)·g'·g'
///   w −= lr·((m/c1) / (sqrt(v/c2) + eps) + decay·w);  g = 0
/// `c1`, `c2`: the bias corrections 1 − b1^t, 1 − b2^t.
void thor_adam_update(float *w, float *g, float *m, float *v, long count,
                      float lr, float clip, float b1, float b2, float c1, float c2,
                      float eps, float decay);

/// e^x with exactly the bits of glibc's `expf` (its x86-64 FMA variant, glibc ≥ 2.28) for every
/// float, NaN, ±inf, overflow (+inf) and underflow (+0, or 2^-149 just above log 2^-150) included,
/// on any x86-64 CPU (expf.c; checked over all 2^32 inputs). Not rounding-mode aware (nearest
/// only) and does not set errno.
float thor_expf(float x);

/// out[i] = thor_expf(x[i]) for i < count, vectorized (AVX-512, AVX2 + FMA or baseline clone).
void thor_expf_array(const float *x, float *out, long count);

/// out[i] = thor_expf(x[i] − shift), the subtraction rounded to float first (as Swift's
/// `expf(x[i] - shift)`). `x` and `out` must not overlap; see `thor_expf_shifted_in_place`.
void thor_expf_shifted(const float *x, float shift, float *out, long count);

/// x[i] = thor_expf(x[i] − shift) in place.
void thor_expf_shifted_in_place(float *x, float shift, long count);

/// The running maximum `m = −inf; for i in 0..<count { m = x[i] >= m ? x[i] : m }` (Swift's
/// `max(m, x[i])` in index order), vectorized with the same bits for every input: the largest
/// non-NaN element (NaNs are skipped; −inf if there is none), and for a zero maximum the sign of the
/// last zero (running_max.c).
float thor_running_max(const float *x, long count);

/// A dropout mask from a SplitMix64 generator in state `state` (ThorTensor's `RandomGenerator`):
/// mask[i] = u_i < rate ? 0 : keep, u_i = (draw i+1 >> 40) · 2^-24, the draws `nextFloat()` makes
/// one by one; vectorized (dropout.c). The caller advances its generator by `count`.
void thor_dropout_mask(float *mask, long count, uint64_t state, float rate, float keep);

#endif
