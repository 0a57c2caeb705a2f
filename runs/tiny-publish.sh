#!/bin/bash
# Publishes the finished tiny benchmark: both reports, as the tools wrote them, to
# docs/results/{heldout,novel}/ (the old heldout-tiny report of an earlier run leaves: its
# split had no unseen families), docs/results.md regenerated, and models/tiny exported again with
# both reports in its model card. Refuses while a report is missing.
#   runs/tiny-publish.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
for split in heldout novel; do
  [ -f "runs/tiny/$split/report.json" ] || { echo "runs/tiny/$split/report.json is missing: run runs/tiny-bench.sh" >&2; exit 2; }
done
for split in heldout novel; do
  rm -rf "docs/results/$split"
  mkdir -p "docs/results/$split"
  # the report and what it draws; the per-concept fine-tunes and sweep runs stay in runs/tiny
  find "runs/tiny/$split" -maxdepth 1 -type f \( -name '*.json' -o -name '*.md' -o -name '*.png' \) \
    -exec cp {} "docs/results/$split/" \;
  [ -d "runs/tiny/$split/grids" ] && cp -r "runs/tiny/$split/grids" "docs/results/$split/"
done
rm -rf docs/results/heldout-tiny
export HF_HUB_OFFLINE=1 PYTHONNOUSERSITE=1
.venv/bin/weightgen results index docs/results
.venv/bin/weightgen export-model --run runs/tiny --out models/tiny \
  --report runs/tiny/heldout --report runs/tiny/novel
git status --short docs/results docs/results.md models/tiny
