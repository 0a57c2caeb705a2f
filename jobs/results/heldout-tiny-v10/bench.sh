#!/usr/bin/env bash
# Session 10's benchmark on the rebuilt 16-channel run: session 9's settings on the same 26
# held-out concepts, plus the `refined` method (nearest LoRA, one denoising step from strength
# 0.5, fixed before any measurement) and its step-0 rows at strengths 0.3 and 0.7.
#     bash jobs/results/heldout-tiny-v10/bench.sh runs/v9
set -euo pipefail
RUN=${1:-runs/v9}
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
.venv/bin/weightgen evaluate --generator "$RUN/gen" --run "$RUN" --out "$RUN/report" \
    --per-family 2 --lora-steps 600 --lora-until-plateau --scratch-max-steps 1500 \
    --sweep-concepts 6 --sweep-steps 600 --workers 2 --refine 0.5 \
    --ablate ddim10 --ablate empty-text --ablate refine0.3 --ablate refine0.7
