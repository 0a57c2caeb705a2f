#!/bin/bash
# Issue 25: the benchmark, both splits, of the recipe chosen on the validation split (and checked
# on a left-out training family, runs/tiny-lofo.sh): configs/tiny.toml with the pairs lever
# (generator.pair_features) and the picked method (bench.pick) beside the plain generated one.
# The base and the collected LoRAs are runs/tiny's (the same recipe sections: linked, not made
# again); the generator is runs/tiny/levers/ablations/pairs/generator, trained with exactly this
# recipe's [generator] settings (the benchmark checks them before reusing it), so its one-off cost
# is the tiny run's with that generator's training time. Resumable like runs/tiny-bench.sh.
#   nohup setsid runs/tiny-v2.sh > runs/tiny-v2.log 2>&1 &
set -e
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PIN=${V2_PIN:-cd4cc65}  # picked, the recipe check before reuse
WT=${V2_WORKTREE:-/work/v2}
[ -d "$WT/weightgen" ] || git worktree add -f "$WT" "$PIN" --detach
[ "$(git -C "$WT" rev-parse HEAD)" = "$(git rev-parse "$PIN^{commit}")" ] || git -C "$WT" checkout -q --detach "$PIN"
[ -x .venv/bin/weightgen ] || make venv
RUN=$REPO/runs/tiny-v2
mkdir -p "$RUN"
for part in base dataset; do [ -e "$RUN/$part" ] || ln -s ../tiny/$part "$RUN/$part"; done
if [ ! -f "$RUN/generator/generator.json" ]; then  # copied whole, then moved in place
  rm -rf "$RUN/.generator.tmp" && mkdir -p "$RUN/.generator.tmp"
  src=$REPO/runs/tiny/levers/ablations/pairs/generator
  for f in "$src"/*; do [ "$(basename "$f")" = checkpoints ] || cp -r "$f" "$RUN/.generator.tmp/"; done
  rm -rf "$RUN/generator" && mv "$RUN/.generator.tmp" "$RUN/generator"
fi
cd "$WT"  # Ray puts the driver's working directory first on its workers' sys.path
export PYTHONPATH=$WT DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONNOUSERSITE=1
RECIPE=(--config "$WT/configs/tiny.toml" --set generator.pair_features=true --set bench.pick=true)
for split in heldout novel; do
  date
  if [ $split = novel ] && [ -f "$RUN/heldout/sweep.json" ] && [ ! -e "$RUN/novel/sweep.json" ]; then
    mkdir -p "$RUN/novel" && cp -r "$RUN"/heldout/sweep* "$RUN/novel/"  # validation concepts: shared
  fi
  "$REPO/.venv/bin/weightgen" benchmark "${RECIPE[@]}" --split $split --out "$RUN" --workers 2
done
date
