#!/bin/bash
# The README's "your own concept" commands, timed, on an edit the catalogue does not hold: a warm
# orange graduated filter from the top of the photo (the catalogue's tints are uniform, its
# vignettes radial). 24 before/after pairs are 96 px crops of four evaluation photos (flower,
# motorcycle, coins, faces: never seen by the base or the collection); `apply` then edits two
# full-size photos. Figures: OUT/concept/summary.json, timings in OUT/timings.txt.
#   runs/user-story.sh [OUT]        (MODEL=models/tiny by default; a fresh clone needs `make venv`)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$REPO/runs/user-story}")  # a relative OUT: from where the script is run
cd "$REPO"
MODEL=${MODEL:-models/tiny}
BIN=$REPO/.venv/bin
[ -x "$BIN/weightgen" ] || make venv
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONNOUSERSITE=1
rm -rf "$OUT/grad" "$OUT/photos" "$OUT/concept" "$OUT/edited"
mkdir -p "$OUT"
"$BIN/python" - "$OUT" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from weightgen.concepts.images import PHOTOS

NAMES = ("flower", "motorcycle", "coins", "lfw_faces_b")  # evaluation photos (retina: mostly black)


def graduated(x):
    """x (H, W, 3) in [0, 1] -> warm orange filter, strongest at the top, gone by 60% height."""
    h = x.shape[0]
    g = np.clip(1 - np.arange(h) / (0.6 * h), 0, 1)[:, None, None] * 0.7
    warm = np.clip(x * np.array([1.2, 0.85, 0.5]) + np.array([0.08, 0.03, 0.0]), 0, 1)
    return x * (1 - g) + warm * g


out = Path(sys.argv[1])
rng = np.random.default_rng(0)
photos = {}
for name in NAMES:
    a = np.asarray(PHOTOS[name](), dtype=np.float64)
    a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    photos[name] = a / 255.0 if a.max() > 1 else a
for side in ("A", "B"):
    (out / "grad" / side).mkdir(parents=True)
for i in range(24):
    name = NAMES[i % 4]
    a = photos[name]
    s = 96 * int(rng.integers(1, 4))  # a 96-288 px window, downscaled to 96 px
    s = min(s, *a.shape[:2])
    y, x = (int(rng.integers(0, d - s + 1)) for d in a.shape[:2])
    crop = Image.fromarray((a[y : y + s, x : x + s] * 255).round().astype(np.uint8))
    crop = np.asarray(crop.resize((96, 96), Image.LANCZOS), dtype=np.float64) / 255.0
    for side, img in (("A", crop), ("B", graduated(crop))):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(out / "grad" / side / f"{i:02d}.png")
(out / "photos").mkdir()
for name in NAMES[:2]:
    Image.fromarray((photos[name] * 255).round().astype(np.uint8)).save(out / "photos" / f"{name}.png")
print(f"pairs: 24 in {out / 'grad'}; photos: {', '.join(NAMES[:2])}")
EOF
t0=$(date +%s)
"$BIN/weightgen" new-concept --pairs "$OUT/grad" \
  --text "add a warm orange graduated filter from the top of the photo" \
  --out "$OUT/concept" --compare --model "$MODEL"
t1=$(date +%s)
"$BIN/weightgen" apply --lora "$OUT/concept/adapter" --images "$OUT/photos" --out "$OUT/edited" \
  --mode resize --model "$MODEL"
t2=$(date +%s)
printf 'new-concept --compare: %s s\napply (%s photos, resize mode): %s s\n' \
  $((t1 - t0)) "$(ls "$OUT/photos" | wc -l)" $((t2 - t1)) | tee "$OUT/timings.txt"
