#ifndef THOR_ATOMICS_H
#define THOR_ATOMICS_H

#include <stdint.h>

/// 64-bit atomics on memory shared between processes (a shared-memory ring's release
/// position): Swift has no atomics on raw pointers it does not own.
static inline uint64_t thor_atomic_load_acquire_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void thor_atomic_store_release_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

#endif
