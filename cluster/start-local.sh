#!/usr/bin/env bash
# Starts a coordinator with W local expert workers (ipc by default), runs the
# smoke exchange, and keeps the cluster up until Ctrl-C.
#   cluster/start-local.sh [WORKERS] [ipc|tcp] [extra `thor cluster` flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-2}
transport=${2:-ipc}
shift $(( $# > 2 ? 2 : $# ))
thor=${THOR_BINARY:-.build/release/thor}
if [ ! -x "$thor" ]; then
  echo "start-local: building thor (release)" >&2
  swift build -c release --product thor >&2
  thor=.build/release/thor
fi
exec "$thor" cluster --workers "$workers" --transport "$transport" --wait "$@"
