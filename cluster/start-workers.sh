#!/usr/bin/env bash
# Runs N expert workers on THIS machine, connected to a coordinator elsewhere
# (multi-machine form; no ssh: run it on every worker node).
#   cluster/start-workers.sh tcp://COORDINATOR_HOST:PORT [N] [THREADS]
# Worker ids are HOSTNAME-0, HOSTNAME-1, …  Ctrl-C (or SIGTERM) stops them all.
# The workers also exit by themselves when the coordinator shuts them down or
# has been unreachable for --orphan-timeout seconds (default 30; ORPHAN_TIMEOUT=…).
# CURVE keys (a coordinator started with --server-key/--allowed-keys): set
# KEY=this-node.key SERVER_PUBLIC_KEY=coordinator.pub (all workers of the node share the key).
set -euo pipefail
endpoint=${1:?usage: cluster/start-workers.sh tcp://HOST:PORT [N] [THREADS]}
count=${2:-1}
threads=${3:-1}
case "$endpoint" in tcp://*|ipc://*) ;; *) echo "start-workers: endpoint must be tcp://HOST:PORT or ipc://PATH" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
thor=${THOR_BINARY:-.build/release/thor}
[ -x "$thor" ] || { echo "start-workers: $thor not found; build with: swift build -c release --product thor" >&2; exit 1; }
host=$(hostname -s 2>/dev/null || hostname)
keys=()
if [ -n "${KEY:-}${SERVER_PUBLIC_KEY:-}" ]; then
  keys=(--key "${KEY:?KEY and SERVER_PUBLIC_KEY go together}" --server-public-key "${SERVER_PUBLIC_KEY:?KEY and SERVER_PUBLIC_KEY go together}")
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for i in $(seq 0 $((count - 1))); do
  "$thor" worker --connect "$endpoint" --id "$host-$i" --threads "$threads" \
    --orphan-timeout "${ORPHAN_TIMEOUT:-30}" --verbose "${keys[@]}" &
  pids+=($!)
done
echo "start-workers: ${#pids[@]} workers (${pids[*]}) connecting to $endpoint" >&2
# Exit when every worker has exited (Shutdown from the coordinator), or on Ctrl-C.
wait
