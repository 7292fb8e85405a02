#include "thor_kernels.h"
#include <math.h>

// One clone per vector width; the loader picks the widest this CPU runs (glibc ifunc).
// IEEE multiply, add, divide and square root are correctly rounded at any width, and
// -ffp-contract=off keeps multiplies and adds apart, so every clone gives the same bits.
__attribute__((target_clones("avx512f", "avx2", "default")))
void thor_adam_update(float *restrict w, float *restrict g, float *restrict m, float *restrict v, long count,
                      float lr, float clip, float b1, float b2, float c1, float c2,
                      float eps, float decay) {
    const float ob1 = 1.0f - b1, ob2 = 1.0f - b2;
    for (long i = 0; i < count; i++) {
        const float gi = g[i] * clip;
        const float mi = b1 * m[i] + ob1 * gi;
        const float vi = b2 * v[i] + ob2 * gi * gi;
        const float wi = w[i];
        const float mhat = mi / c1;
        const float vhat = vi / c2;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi - lr * (mhat / (sqrtf(vhat) + eps) + decay * wi);
        g[i] = 0.0f;
    }
}
