#!/usr/bin/env bash
# The test suite: installs what it needs, checks generated code is current, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/gen-protos.sh --check
# Release build: the numerical tests (finite differences, training to convergence,
# distributed runs) are compute-bound; tests use only public API (no @testable).
# Same OpenBLAS kernels as the `thor` executable picks (see BLASCore in ThorTensor).
if [ -z "${OPENBLAS_CORETYPE+x}" ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  export OPENBLAS_CORETYPE=Haswell
fi
swift build -c release --product thor
swift test -c release --parallel --num-workers 2 "$@"
