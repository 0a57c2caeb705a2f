#!/bin/bash
# Issue 25's levers on the tiny run, chosen on the validation split (training families' concepts
# that were never collected), never on heldout or novel concepts: each lever's generator is trained
# like runs/tiny/generator (same recipe, steps and seed; one intra-op thread) under
# runs/tiny/levers/ablations/NAME/generator, resumed from its last checkpoint; after each,
# `weightgen evaluate --split validation` writes the finished ones' step-0 rows beside the
# reference's and the sampling-time ablations' (runs/tiny/levers/report.md). Needs
# runs/tiny/generator finished. Training code: the tiny generator's (9ad3c6f) plus neighbor_pool,
# which leaves a run without a pool unchanged.
#   nohup setsid runs/tiny-levers.sh > runs/tiny/levers/levers.log 2>&1 &
set -e
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PIN=${LEVERS_PIN:-63f17b3}  # evaluate --split validation, A+B ablations, neighbor_pool
WT=${LEVERS_WORKTREE:-/work/levers}
[ -d "$WT/weightgen" ] || git worktree add -f "$WT" "$PIN" --detach
[ "$(git -C "$WT" rev-parse HEAD)" = "$(git rev-parse "$PIN^{commit}")" ] || git -C "$WT" checkout -q --detach "$PIN"
[ -x .venv/bin/weightgen ] || make venv
RUN=$REPO/runs/tiny
OUT=$RUN/levers
cd "$WT"  # Ray puts the driver's working directory first on its workers' sys.path
export PYTHONPATH=$WT DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONNOUSERSITE=1
train() {  # NAME, then the generator fields that make the lever
  local name=$1 gen=$OUT/ablations/$1/generator
  shift
  [ -f "$gen/generator.json" ] && return 0
  local resume=()
  [ -d "$gen/checkpoints" ] && resume=(--resume)
  date
  "$REPO/.venv/bin/weightgen" train --data "$RUN/dataset" --out "$gen" --config "$WT/configs/tiny.toml" \
    --set "generator.base=\"$RUN/base\"" --set generator.stream=false "$@" "${resume[@]}"
}
evaluate() {  # the step-0 rows of every finished lever and of the sampling-time ablations
  local levers=()
  for g in "$OUT"/ablations/*/generator/generator.json; do
    [ -f "$g" ] && levers+=(--ablate "$(basename "$(dirname "$(dirname "$g")")")")
  done
  date
  "$REPO/.venv/bin/weightgen" evaluate --generator "$RUN/generator" --run "$RUN" \
    --split validation --out "$OUT" --config "$WT/configs/tiny.toml" --set bench.finetune=false \
    "${levers[@]}" --ablate ddim10 --ablate empty-text --ablate refine0.3 --ablate refine0.7 \
    --ablate blend0.25 --ablate blend0.75
}
train neighbors4 --set generator.neighbors=4 --set generator.neighbor_family_drop=0.25
evaluate
train pairs --set generator.pair_features=true
evaluate
# neighbors4 came out no better than its own 4-nearest start (it learnt its fixed neighbour sets)
train neighbors4-pool12 --set generator.neighbors=4 --set generator.neighbor_family_drop=0.25 \
  --set generator.neighbor_pool=12
evaluate
date
