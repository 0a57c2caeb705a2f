#!/usr/bin/env bash
# Rebuild session 10's run on a fresh machine from the committed artifacts: the 16-channel base
# and the trained generator are copied (no retraining); only the training LoRAs are collected
# again (about 30 min on 2 workers), which `nearest`, `mean`, `refined` and the one-off cost read.
# Collection is seeded; session 10 saw the baselines' sweep come back identical to session 9's
# for every stable rate (3e-3 and below for scratch, lora-zero, nearest), within 0.5 dB for mean.
#     bash jobs/results/heldout-tiny-v10/restore.sh runs/v9
set -euo pipefail
RUN=${1:-runs/v9}
A=jobs/results/heldout-tiny-v10/artifacts
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
mkdir -p "$RUN/logs" "$RUN/gen"
cp -r "$A/base" "$RUN/"
cp -r "$A/gen/." "$RUN/gen/"
.venv/bin/weightgen collect --base "$RUN/base" --out "$RUN/dataset" --workers 2 >"$RUN/logs/collect.log" 2>&1
.venv/bin/weightgen sensitivity --base "$RUN/base" --data "$RUN/dataset" >"$RUN/logs/sens.log" 2>&1
