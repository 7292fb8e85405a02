#include "thor_kernels.h"

// The running maximum `m = −inf; for each x: m = (x >= m) ? x : m` (Swift's `max(m, x)`), in
// 16 independent lanes the compiler vectorizes, then the lanes combined with the same rule.
// The value is the largest non-NaN element (a NaN never compares ≥, so it never enters), or −inf
// when there is none: the same in any grouping. The one thing grouping could change is the sign of
// a zero maximum (+0 and −0 compare equal, and the rule keeps the later one): when the maximum is
// zero, the last zero of the row is returned, as the sequential loop does. So the result has the
// bits of the sequential loop for every input.
#define THOR_MAX_LANES 16

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
float thor_running_max(const float *x, long count) {
    float lane[THOR_MAX_LANES];
    for (int l = 0; l < THOR_MAX_LANES; l++) lane[l] = -__builtin_inff();
    long i = 0;
    for (; i + THOR_MAX_LANES <= count; i += THOR_MAX_LANES) {
        for (int l = 0; l < THOR_MAX_LANES; l++) {
            const float v = x[i + l];
            lane[l] = v >= lane[l] ? v : lane[l];
        }
    }
    float m = -__builtin_inff();
    for (int l = 0; l < THOR_MAX_LANES; l++) m = lane[l] >= m ? lane[l] : m;
    for (; i < count; i++) m = x[i] >= m ? x[i] : m;
    if (m == 0) {
        for (long j = count - 1; j >= 0; j--) {
            if (x[j] == 0) return x[j];
        }
    }
    return m;
}
