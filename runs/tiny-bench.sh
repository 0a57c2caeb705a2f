#!/bin/bash
# The tiny benchmark, both splits, from nothing or from what runs/tiny already holds (each stage is
# reused when complete; the generator resumes from a checkpoint committed with `git add -f`, the
# sweep and the fine-tunes from their saved runs). The code is pinned in a worktree so that commits
# made while it runs do not change it: base, data set and the generator's first part were made at
# 9ad3c6f; d719e15 adds only the resumable sweep.
#   nohup setsid runs/tiny-bench.sh > runs/tiny-bench.log 2>&1 &
set -e
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PIN=d719e15
WT=${BENCH_WORKTREE:-/work/bench}
[ -d "$WT/weightgen" ] || git worktree add -f "$WT" "$PIN" --detach
[ "$(git -C "$WT" rev-parse HEAD)" = "$(git rev-parse "$PIN^{commit}")" ] || git -C "$WT" checkout -q --detach "$PIN"
[ -x .venv/bin/weightgen ] || make venv
RUN=$REPO/runs/tiny
# from the worktree: Ray puts the driver's working directory first on its workers' sys.path
cd "$WT"
export PYTHONPATH=$WT DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONNOUSERSITE=1
for split in heldout novel; do
  date
  if [ $split = novel ] && [ -f "$RUN/heldout/sweep.json" ] && [ ! -e "$RUN/novel/sweep.json" ]; then
    # the sweep runs on validation concepts, the same for both splits: its runs are reused
    mkdir -p "$RUN/novel" && cp -r "$RUN"/heldout/sweep* "$RUN/novel/"
  fi
  "$REPO/.venv/bin/weightgen" benchmark --config "$WT/configs/tiny.toml" --split $split \
    --out "$RUN" --workers 2
done
date
