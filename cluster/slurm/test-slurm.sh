#!/usr/bin/env bash
# End-to-end test of cluster/slurm/thor.sbatch on a single-node Slurm this script starts itself:
# installs Debian's slurm-wlm and munge if missing (apt, needs root), starts munged (unless one
# answers), slurmctld and slurmd with a generated slurm.conf, submits a job with 1 coordinator +
# 2 worker tasks (CURVE keys made for the job), and checks that the trained checkpoint equals a
# local `thor train --workers 2` run's bit for bit. Stops the daemons it started and removes its
# files on every exit path. Prints "slurm test passed in N s" last.
#
#     sudo cluster/slurm/test-slurm.sh          # from anywhere; builds .build/release/thor if needed
# Environment: THOR_BINARY (a built thor), KEEP=1 (keep the work directory for inspection).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
started=$(date +%s)
say() { echo "test-slurm: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root (apt-get, munged, slurmd)"; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
thor=${THOR_BINARY:-$repo/.build/release/thor}
if [ -z "${THOR_BINARY:-}" ]; then
  say "building thor (release)"
  swift build -c release --product thor >/dev/null
fi

work=$(mktemp -d /tmp/thor-slurm.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  status=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$status" != 0 ]; then
    say "FAILED (status $status); logs:"
    for f in "$work"/*.log "$work"/job.out; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 40 "$f" >&2; }; done
  fi
  if [ "${KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# munge: Slurm's authentication. Reuse a running munged, else start one on its default socket.
if ! munge -n </dev/null >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged --foreground --log-file="$work/munged.log" >"$work/munged.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null >/dev/null 2>&1 || { say "munged did not start"; exit 1; }
fi

node=$(hostname -s)
port=$((6817 + RANDOM % 1000))
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" <<CONF
ClusterName=thortest
SlurmctldHost=$node
SlurmctldPort=$port
SlurmdPort=$((port + 1000))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$node CPUs=4 State=UNKNOWN
PartitionName=thor Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$work/slurm.conf
say "starting slurmctld and slurmd (node $node, port $port)"
slurmctld -D -i -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || { say "node $node is '$state', not idle, after 60 s"; exit 1; }

# A small configuration: 20 steps of a tiny model (seconds on 2 cores).
cat > "$work/config.json" <<'CONF'
{
  "model": {"model_dim": 16, "hidden_dim": 32, "heads": 2},
  "routing": {"experts": 4},
  "data": {"synthetic_pairs": 300, "synthetic_eval_pairs_per_task": 3, "vocabulary_size": 300},
  "training": {"max_steps": 20, "max_tokens_per_batch": 256, "dev_interval": 10, "checkpoint_interval": 10, "log_interval": 5},
  "evaluation": {"max_output_length": 12, "dev_sentences": 4}
}
CONF

say "local reference run (2 workers)"
"$thor" train --config "$work/config.json" --workers 2 --save-dir "$work/local" --no-progress --no-eval >"$work/local.log" 2>&1

say "submitting the job: 1 node, 3 tasks (1 coordinator + 2 workers)"
job_started=$(date +%s)
sbatch --wait --nodes=1 --ntasks-per-node=3 --output="$work/job.out" --chdir="$repo" \
  --export=ALL,THOR_CONFIG="$work/config.json",THOR_SAVE_DIR="$work/slurm",THOR_BINARY="$thor",THOR_JOB_DIR="$work/job",THOR_TRAIN_ARGS=--no-eval \
  cluster/slurm/thor.sbatch >"$work/sbatch.log"
say "job finished in $(( $(date +%s) - job_started )) s"
grep -q "links are CURVE-encrypted" "$work/job.out" || { say "the coordinator did not use keys"; exit 1; }

compared=0
while IFS= read -r f; do
  cmp -s "$work/local/checkpoint-last/$f" "$work/slurm/checkpoint-last/$f" \
    || { say "$f differs between the local and the Slurm run"; exit 1; }
  compared=$((compared + 1))
done < <(cd "$work/local/checkpoint-last" && find . -name '*.safetensors' -o -name config.json -o -name state.json | sort)
[ "$compared" -gt 2 ] || { say "only $compared checkpoint files to compare"; exit 1; }
# Every logged training figure but the timings is the same too.
figures() { grep '"split":"train"' "$1" | sed -E 's/"(elapsed_s|tokens_per_s)":[^,}]*,?//g'; }
cmp -s <(figures "$work/local/metrics.jsonl") <(figures "$work/slurm/metrics.jsonl") \
  || { say "metrics.jsonl training records differ"; exit 1; }
say "checkpoint-last: $compared files (weights, config, state) bit-identical to the local run; training metrics equal"
echo "slurm test passed in $(( $(date +%s) - started )) s"
