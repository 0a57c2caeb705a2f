#!/bin/bash
# The tiny benchmark, both splits, from nothing or from what runs/tiny already holds (each stage is
# reused when complete; the generator, the sweep and the fine-tunes resume). The code is pinned in
# a worktree so that commits made while it runs do not change it: base, data set and the generator
# up to its committed checkpoint were made at 9ad3c6f; d719e15 adds only the resumable sweep.
#   nohup setsid runs/tiny-bench.sh > runs/tiny-bench.log 2>&1 &
set -e
cd "$(dirname "$0")/.."
PIN=d719e15
WT=${BENCH_WORKTREE:-/work/bench}
[ -d "$WT/weightgen" ] || git worktree add -f "$WT" "$PIN" --detach
[ "$(git -C "$WT" rev-parse HEAD)" = "$(git rev-parse "$PIN^{commit}")" ] || git -C "$WT" checkout -q --detach "$PIN"
[ -x .venv/bin/weightgen ] || make venv
export PYTHONPATH=$WT DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONNOUSERSITE=1
for split in heldout novel; do
  date
  if [ $split = novel ] && [ -f runs/tiny/heldout/sweep.json ]; then
    # the sweep runs on validation concepts, the same for both splits: its runs are reused
    mkdir -p runs/tiny/novel && cp -rn runs/tiny/heldout/sweep* runs/tiny/novel/
  fi
  .venv/bin/weightgen benchmark --config configs/tiny.toml --split $split --out runs/tiny --workers 2
done
date
