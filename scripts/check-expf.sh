#!/bin/sh
# Compare CThorKernels' expf with the C library's over all 2^32 floats, every clone (see
# scripts/check-expf.c). Usage: scripts/check-expf.sh [scalar|v4|v3|default …]  (from the repo root)
set -e
out="${TMPDIR:-/tmp}/thor-check-expf.$$"
trap 'rm -f "$out"' EXIT
clang -O3 -fno-math-errno -ffp-contract=off -ISources/CThorKernels/include \
    scripts/check-expf.c Sources/CThorKernels/expf.c -lm -o "$out"
"$out" "$@"
