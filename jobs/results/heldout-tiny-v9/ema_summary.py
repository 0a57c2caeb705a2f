"""Summary of ema_probe.py's output: per decay, scratch's plateau-stopped final quality is the
target; steps to it and final quality per method, and the median step speed-ups.

    python jobs/results/heldout-tiny-v9/ema_summary.py 'jobs/results/heldout-tiny-v9/probes/ema*.json'
"""

import glob
import json
import statistics
import sys

from weightgen.eval.metrics import plateau_quality, plateaued, speedups, time_to_target

res = {}
for f in glob.glob(sys.argv[1]):
    res.update(json.load(open(f)))


def trunc(curve, patience=300):
    out = []
    for p in curve:
        out.append(p)
        if plateaued(out, patience_steps=patience, min_gain=0.2):
            break
    return out


for k in ("0.0", "0.9", "0.97"):
    rows = {"scratch": [], "generated": [], "lora-zero": [], "nearest": []}
    finals = {m: [] for m in rows}
    for _cid, r in res.items():
        if "nearest" not in r:
            continue
        sc = trunc(r["scratch"][k])
        tgt = plateau_quality(sc)
        for m in rows:
            cv = sc if m == "scratch" else trunc(r[m][k])
            finals[m].append(plateau_quality(cv))
            rows[m].append(time_to_target(cv, tgt)[1])
    # the benchmark's own ratio rule (metrics.speedups), here on steps
    sp = speedups(rows["scratch"], rows["generated"])["median"]
    spz = speedups(rows["lora-zero"], rows["generated"])["median"]
    print(
        f"decay {k} (n={len(rows['scratch'])}) speedup(steps) scratch/gen median {sp:.2f}  "
        f"lora-zero/gen {spz:.2f}"
    )
    for m in rows:
        v = [1e9 if s is None else s for s in rows[m]]
        print(
            f"   {m:10s} final {statistics.median(finals[m]):.2f}  steps-to-target median {statistics.median(v):.0f}  never {sum(s is None for s in rows[m])}  {[s for s in rows[m]]}"
        )
