#!/usr/bin/env bash
# Regenerates Sources/CThorProto from Protos/*.proto with protoc-c
# (sources in Sources/CThorProto, headers in Sources/CThorProto/include).
#   scripts/gen-protos.sh           regenerate in place
#   scripts/gen-protos.sh --check   regenerate into a temp dir; fail if the committed code differs
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: scripts/gen-protos.sh [--check]" >&2; exit 2 ;;
esac
command -v protoc-c >/dev/null || { echo "gen-protos: protoc-c not found (apt-get install protobuf-c-compiler)" >&2; exit 1; }
shopt -s nullglob
protos=(Protos/*.proto)
[ ${#protos[@]} -gt 0 ] || { echo "gen-protos: no Protos/*.proto" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc-c --proto_path=Protos --c_out="$tmp" "${protos[@]}"
mkdir -p "$tmp/out/include"
for f in "$tmp"/*.pb-c.c; do
  # The header moves to include/: SwiftPM makes the module map from it.
  sed 's|#include "\(.*\.pb-c\.h\)"|#include "include/\1"|' "$f" > "$tmp/out/$(basename "$f")"
done
cp "$tmp"/*.pb-c.h "$tmp/out/include/"

dest=Sources/CThorProto
if [ $check -eq 1 ]; then
  if ! diff -r -q "$tmp/out" "$dest" >/dev/null 2>&1; then
    echo "gen-protos: Sources/CThorProto is stale or hand-edited; it differs from what protoc-c $(protoc-c --version | head -1 | awk '{print $2}') generates from Protos/:" >&2
    diff -r -q "$tmp/out" "$dest" >&2 || true
    echo "gen-protos: run scripts/gen-protos.sh and commit the result" >&2
    exit 1
  fi
  echo "gen-protos: Sources/CThorProto is up to date"
else
  rm -rf "$dest"
  mkdir -p "$dest"
  cp -r "$tmp/out/." "$dest/"
  echo "gen-protos: regenerated $dest from ${protos[*]}"
fi
