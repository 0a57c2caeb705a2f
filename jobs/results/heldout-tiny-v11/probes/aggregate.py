"""Session 11 probe (run from the repository root with runs/v9 in place):
Medians and win rates over nearest of a probe's JSON, and choosing among candidates by their
training-pair PSNR.
    python jobs/results/heldout-tiny-v11/probes/aggregate.py /tmp/probe/mix.json
"""

import json
import sys

import numpy as np

r = json.load(open(sys.argv[1]))
names = list(next(iter(r.values())))
n0 = np.array([v["n0"][0] for v in r.values()])
for n in names:
    e = np.array([v[n][0] for v in r.values()])
    print(f"{n:6s} {np.median(e):6.2f} {np.mean(e > n0):.2f}")


def sel(pool):
    return np.array([v[max(pool, key=lambda k: v[k][1])][0] for v in r.values()])


for pool in (
    ["g", "n0"],
    ["n0", "n1", "n2"],
    ["g", "n0", "n1", "n2"],
    ["g", "n0", "n1", "n2", "n3", "n4"],
    ["g", "n0", "m0.25", "m0.5", "m0.75"],
    ["g", "n0", "n1", "n2", "m0.5"],
    ["g", "m0.5", "n0", "n1", "n2", "n01"],
):
    e = sel(pool)
    print(
        "select",
        pool,
        f"{np.median(e):.2f}",
        f"{np.mean(e > n0):.2f}",
        "picked g:",
        sum(max(pool, key=lambda k: v[k][1]) == "g" for v in r.values()),
    )
