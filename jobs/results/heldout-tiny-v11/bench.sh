#!/usr/bin/env bash
# Session 11's benchmark: session 10's run (restore.sh) with the `blended` method added
# (0.5 x generated + 0.5 x nearest), and the blend weight read out at 0.25 and 0.75 at step 0.
# The rates come from the committed sweep.json (every method's row; its keys name the run folder
# /work/main/runs/v9, and a run elsewhere is swept again, about 30 min more). Extra arguments go
# to `weightgen evaluate`. About 50 min on 2 Ray workers.
#     bash jobs/results/heldout-tiny-v10/restore.sh runs/v9    # on a fresh machine (30 min)
#     bash jobs/results/heldout-tiny-v11/bench.sh runs/v9                                  # the 26
#     bash jobs/results/heldout-tiny-v11/bench.sh runs/v9 runs/v9/report-v11b --skip-per-family 2
#     python jobs/results/heldout-tiny-v10/summary.py runs/v9/report-v11/report.json
set -euo pipefail
RUN=${1:-runs/v9}
OUT=${2:-$RUN/report-v11}
shift $(($# < 2 ? $# : 2))
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
[ -f "$OUT/sweep.json" ] || cp jobs/results/heldout-tiny-v11/sweep.json "$OUT/"
.venv/bin/weightgen evaluate --generator "$RUN/gen" --run "$RUN" --out "$OUT" \
    --per-family 2 --lora-steps 600 --lora-until-plateau --scratch-max-steps 1500 \
    --sweep-concepts 6 --sweep-steps 600 --workers 2 --blend 0.5 \
    --ablate blend0.25 --ablate blend0.75 "$@"
