#!/usr/bin/env bash
# count-tests.sh XUNIT_XML [SWIFT_TEST_STATUS]
# Prints "N passed, N failed" from an XCTest xUnit file and exits non-zero when a
# test failed, the file is missing or holds no test, or swift test itself failed.
set -euo pipefail
xml=${1:?usage: count-tests.sh XUNIT_XML [STATUS]}
status=${2:-0}
if [ ! -s "$xml" ]; then
  echo "thor: no test results in $xml (swift test exited $status)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
total=$(grep -o '<testcase ' "$xml" | wc -l)
failed=$(grep -c '<failure' "$xml" || true)
# A testcase with several <failure> elements counts once.
failed_cases=$(awk 'BEGIN{RS="</testcase>"} /<failure/ {n++} END{print n+0}' "$xml")
[ "$failed_cases" -lt "$failed" ] && failed=$failed_cases
passed=$((total - failed))
if [ "$total" -eq 0 ]; then
  echo "thor: swift test ran no test" >&2
  status=1
fi
[ "$failed" -gt 0 ] && status=1
echo "$passed passed, $failed failed"
exit "$status"
