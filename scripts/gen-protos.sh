#!/usr/bin/env bash
# Regenerates Sources/CThorProto from Protos/*.proto with protoc-c; --check fails when the committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
ls Protos/*.proto >/dev/null 2>&1 || { echo "gen-protos: no Protos/*.proto yet"; exit 0; }
echo "gen-protos: not written yet" >&2
