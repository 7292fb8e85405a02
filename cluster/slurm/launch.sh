#!/usr/bin/env bash
# One task of a Slurm job (started by `srun` in thor.sbatch): SLURM_PROCID 0 runs the
# coordinator, the others run expert workers that connect to it. Everything it needs comes
# from the job's environment (SLURM_JOB_NODELIST, SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_ID).
#
# Keys: each task makes a key pair for this job in $JOB_DIR/keys (the job directory is on
# the submit directory's shared filesystem). The coordinator's public key and the workers'
# public keys are exchanged there; secret keys never leave their task's private directory
# (mode 0700, files 0600) and are removed when the task ends.
set -euo pipefail
: "${SLURM_PROCID:?run me under srun (cluster/slurm/thor.sbatch)}"
: "${SLURM_NTASKS:?}" "${SLURM_JOB_ID:?}" "${SLURM_JOB_NODELIST:?}"
THOR=${THOR_BINARY:-.build/release/thor}
CONFIG=${THOR_CONFIG:?set THOR_CONFIG to the configuration file}
PORT=${THOR_PORT:-$((20000 + SLURM_JOB_ID % 10000))}
SAVE_DIR=${THOR_SAVE_DIR:-runs/slurm-$SLURM_JOB_ID}
JOB_DIR=${THOR_JOB_DIR:-.thor-jobs/$SLURM_JOB_ID}
WORKERS=$((SLURM_NTASKS - 1))
KEY_WAIT=${THOR_KEY_WAIT:-120}
# Task 0 runs on the allocation's first node (srun's default block distribution).
HEAD=${THOR_COORDINATOR_HOST:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
NODE=${SLURMD_NODENAME:-$(hostname -s)}
[ -x "$THOR" ] || { echo "task $SLURM_PROCID: no thor executable at $THOR (swift build -c release --product thor, or set THOR_BINARY)" >&2; exit 2; }
[ "$WORKERS" -ge 1 ] || { echo "thor needs at least 2 tasks (1 coordinator + workers), got $SLURM_NTASKS" >&2; exit 2; }

# Waits until $1 matches $2 files (a glob count), or fails after KEY_WAIT seconds.
wait_for() {
  local pattern=$1 want=$2 waited=0
  while [ "$(compgen -G "$pattern" | wc -l)" -lt "$want" ]; do
    sleep 1; waited=$((waited + 1))
    if [ "$waited" -ge "$KEY_WAIT" ]; then
      echo "task $SLURM_PROCID: waited ${KEY_WAIT}s for $want of $pattern (is $JOB_DIR on a shared filesystem?)" >&2
      exit 2
    fi
  done
}

security=()
if [ "${THOR_INSECURE:-0}" = 1 ]; then
  [ "$SLURM_PROCID" = 0 ] && security=(--insecure)
else
  private="$JOB_DIR/keys/private-$SLURM_PROCID"
  mkdir -p "$JOB_DIR/keys/allowed" "$private"
  chmod 700 "$private"
  trap 'rm -rf "$private"' EXIT
  if [ "$SLURM_PROCID" = 0 ]; then
    "$THOR" keys generate --out "$private/coordinator" --force >/dev/null
    wait_for "$JOB_DIR/keys/allowed/*.pub" "$WORKERS"
    security=(--server-key "$private/coordinator.key" --allowed-keys "$JOB_DIR/keys/allowed")
    cp "$private/coordinator.pub" "$JOB_DIR/keys/.coordinator.pub.tmp"
    mv "$JOB_DIR/keys/.coordinator.pub.tmp" "$JOB_DIR/keys/coordinator.pub"   # atomic: workers start now
  else
    "$THOR" keys generate --out "$private/worker" --force >/dev/null
    cp "$private/worker.pub" "$JOB_DIR/keys/allowed/.task-$SLURM_PROCID.tmp"
    mv "$JOB_DIR/keys/allowed/.task-$SLURM_PROCID.tmp" "$JOB_DIR/keys/allowed/task-$SLURM_PROCID.pub"
    wait_for "$JOB_DIR/keys/coordinator.pub" 1
    security=(--key "$private/worker.key" --server-public-key "$JOB_DIR/keys/coordinator.pub")
  fi
fi

if [ "$SLURM_PROCID" = 0 ]; then
  echo "coordinator on $NODE: tcp://$HEAD:$PORT, waiting for $WORKERS workers; save dir $SAVE_DIR" >&2
  # shellcheck disable=SC2086
  status=0
  "$THOR" train --config "$CONFIG" --bind "tcp://*:$PORT" --workers "$WORKERS" --save-dir "$SAVE_DIR" \
    --no-progress "${security[@]}" ${THOR_TRAIN_ARGS:-} || status=$?
  [ "${THOR_INSECURE:-0}" = 1 ] || rm -rf "$JOB_DIR/keys/allowed" "$JOB_DIR/keys/coordinator.pub"
  exit $status
else
  exec "$THOR" worker --connect "tcp://$HEAD:$PORT" --id "$NODE-task$SLURM_PROCID" "${security[@]}"
fi
