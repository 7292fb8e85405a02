#!/usr/bin/env bash
# The test suite: installs what it needs, checks generated code is current, builds, runs every test.
# The last line printed is "N passed, N failed", counted from the XCTest results
# (swift test --parallel ends with Swift Testing's own "0 tests" line otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/gen-protos.sh --check
# Release build: the numerical tests (finite differences, training to convergence,
# distributed runs) are compute-bound; tests use only public API (no @testable).
# Same OpenBLAS kernels as the `thor` executable picks (see BLASCore in ThorTensor).
# The rule of BLASCore.preferredCoreType: SkylakeX (AVX-512) with avx512f, else Haswell with avx2 + fma.
if [ -z "${OPENBLAS_CORETYPE+x}" ]; then
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  if grep -qw avx512f <<<"$flags" && grep -qw avx2 <<<"$flags" && grep -qw fma <<<"$flags"; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 <<<"$flags" && grep -qw fma <<<"$flags"; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
swift build -c release --product thor
results=$(mktemp -d "${TMPDIR:-/tmp}/thor-test-results.XXXXXX")
trap 'rm -rf "$results"' EXIT
status=0
swift test -c release --parallel --num-workers 2 --xunit-output "$results/xunit.xml" "$@" || status=$?
scripts/count-tests.sh "$results/xunit.xml" "$status"
