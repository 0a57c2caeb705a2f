#!/bin/bash
# Validation for unseen families (issue 25): the tiny run with one training family F left out of
# the generator's data set (`weightgen derive --drop-family F`; the base and the collected LoRAs
# are runs/tiny's), a reference generator trained on it like runs/tiny/generator, then
# `weightgen evaluate --split family:F` with each lever as an ablation row (trained there by the
# evaluation, resumed from its checkpoints), and the pick row of the pairs generator (an
# evaluation with it as the generator, under levers-pairs/). Step-0 rows only; a choice made here
# is then measured on the novel split. The derived data set is remade from runs/tiny/dataset in seconds
# and is not kept in git; generators and reports are.
#   nohup setsid runs/tiny-lofo.sh [F] > runs/tiny-lofo-F.log 2>&1 &      (F: posterize)
set -e
F=${1:-posterize}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PIN=${LOFO_PIN:-0f2d636}  # derive, --split family:F, dropped_ops recorded, the pick ablation
WT=${LOFO_WORKTREE:-/work/lofo}
[ -d "$WT/weightgen" ] || git worktree add -f "$WT" "$PIN" --detach
[ "$(git -C "$WT" rev-parse HEAD)" = "$(git rev-parse "$PIN^{commit}")" ] || git -C "$WT" checkout -q --detach "$PIN"
[ -x .venv/bin/weightgen ] || make venv
RUN=$REPO/runs/tiny
L=$REPO/runs/tiny-lofo-$F
W=$REPO/.venv/bin/weightgen
cd "$WT"  # Ray puts the driver's working directory first on its workers' sys.path
export PYTHONPATH=$WT DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONNOUSERSITE=1
mkdir -p "$L"
[ -e "$L/base" ] || ln -s ../tiny/base "$L/base"
[ -f "$L/dataset/manifest.json" ] || "$W" derive --data "$RUN/dataset" --out "$L/dataset" --drop-family "$F"
if [ ! -f "$L/generator/generator.json" ]; then
  resume=()
  [ -d "$L/generator/checkpoints" ] && resume=(--resume)
  date
  "$W" train --data "$L/dataset" --out "$L/generator" --config "$WT/configs/tiny.toml" \
    --set "generator.base=\"$RUN/base\"" --set generator.stream=false "${resume[@]}"
fi
date
"$W" evaluate --generator "$L/generator" --run "$L" --split "family:$F" --out "$L/levers" \
  --config "$WT/configs/tiny.toml" --set bench.finetune=false \
  --ablate pairs --ablate pick --ablate blend0.25 --ablate blend0.75
date
"$W" evaluate --generator "$L/levers/ablations/pairs/generator" --run "$L" --split "family:$F" \
  --out "$L/levers-pairs" --config "$WT/configs/tiny.toml" --set bench.finetune=false --ablate pick
date
