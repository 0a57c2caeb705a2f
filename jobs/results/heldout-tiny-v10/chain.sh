#!/usr/bin/env bash
# The 16-channel chain of session 9 (runs/v9), rebuilt from nothing on a fresh machine: base,
# collection, sensitivity, then the generator and the four baselines' lr sweep side by side
# (one core each). Every stage is seeded; logs go to RUN/logs/.
#     bash jobs/results/heldout-tiny-v10/chain.sh runs/v9
set -euo pipefail
RUN=${1:-runs/v9}
W=.venv/bin/weightgen
PY=.venv/bin/python
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
mkdir -p "$RUN/logs"
stamp() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$RUN/logs/chain.log"; }
stamp base
[ -f "$RUN/base/metrics.json" ] || $W base --out "$RUN" --set gan.channels=16 --steps 8000 >"$RUN/logs/base.log" 2>&1
stamp collect
$W collect --base "$RUN/base" --out "$RUN/dataset" --workers 2 >"$RUN/logs/collect.log" 2>&1
stamp sensitivity
$W sensitivity --base "$RUN/base" --data "$RUN/dataset" >"$RUN/logs/sens.log" 2>&1
stamp generator and baseline sweep
# a one-step generator only so the sweep's context loads (generated's rate is not swept there)
$W train --data "$RUN/dataset" --out "$RUN/gen0" --threads 1 --max-steps 1 >"$RUN/logs/gen0.log" 2>&1
$PY jobs/results/heldout-tiny-v9/sweep_baselines.py "$RUN" "$RUN/gen0" "$RUN/report" >"$RUN/logs/sweep.log" 2>&1 &
SWEEP=$!
$W train --data "$RUN/dataset" --out "$RUN/gen" --threads 1 --paraphrases \
    --loss-weight sensitivity --base "$RUN/base" --text-noise 0.5 \
    --max-steps 5500 --image-loss 5 --image-loss-start 4500 >"$RUN/logs/gen.log" 2>&1
stamp generator done
wait $SWEEP
stamp sweep done
