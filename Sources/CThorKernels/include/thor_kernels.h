#ifndef THOR_KERNELS_H
#define THOR_KERNELS_H

/// Elementwise kernels that Swift does not vectorize well, compiled as plain C with -O3
/// (-fno-math-errno so that sqrtf becomes a vector square root; -ffp-contract=off so that no
/// multiply and add fuse). Every operation is a single correctly rounded IEEE operation in the
/// order written, so the results have the same bits as the same expression in Swift.

/// One Adam step on `count` elements (Kingma & Ba with bias correction, AdamW decay):
///   g' = clip·g;  m = b1·m + (1−b1)·g';  v = b2·v + (1−b2)·g'·g'
///   w −= lr·((m/c1) / (sqrt(v/c2) + eps) + decay·w);  g = 0
/// `c1`, `c2`: the bias corrections 1 − b1^t, 1 − b2^t.
void thor_adam_update(float *w, float *g, float *m, float *v, long count,
                      float lr, float clip, float b1, float b2, float c1, float c2,
                      float eps, float decay);

#endif
