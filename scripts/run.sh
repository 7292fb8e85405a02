#!/usr/bin/env bash
# The main job: installs what it needs, builds, trains a small THOR-MoE on the
# built-in multi-domain corpus over a local cluster (coordinator + 2 expert
# workers), then reports BLEU per task, experts per token, task accuracy and tokens/s.
# Extra arguments go to `thor train` (e.g. --max-steps 200, --workers 3). Each run replaces
# the previous one in runs/main (--overwrite; with --resume runs/main/… it continues instead).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product thor
exec .build/release/thor train --save-dir runs/main --overwrite "$@"
