"""Print the benchmark's tables from a report.json: every method's medians, the speed-ups of
`generated`, `blended`, `refined` and `nearest`, step-0 medians and win rates, and the
per-concept times to target (sessions 10 and 11). Several reports of one run on disjoint
concepts (e.g. --skip-per-family) are pooled: their curves summarised again as one report.

    python jobs/results/heldout-tiny-v10/summary.py runs/v9/report/report.json
    python jobs/results/heldout-tiny-v10/summary.py runs/v9/report-v11/report.json \
        runs/v9/report-v11b/report.json runs/v9/report-v11c/report.json
"""

import json
import sys

from weightgen.eval.metrics import speedups
from weightgen.eval.report import summarise

reports = [json.loads(open(a).read()) for a in sys.argv[1:]]
rep = reports[0]
m, pc = rep["methods"], rep["per_concept"]
if len(reports) > 1:
    runs = {}
    for r in reports:
        if set(r["runs"]) & set(runs):
            sys.exit(f"reports share concepts: {sorted(set(r['runs']) & set(runs))}")
        if r["learning_rates"] != rep["learning_rates"] or r["step0"] != rep["step0"]:
            sys.exit("reports differ in learning rates or step 0: not one run's")
        runs.update(r["runs"])
    pooled = summarise(rep["step0"], runs)
    m, pc = pooled["methods"], pooled["per_concept"]
    print(f"pooled: {len(pc)} concepts from {len(reports)} reports\n")
print("| method | PSNR step 0 | PSNR final | s to target | steps to target | reached | lr |")
print("|---|---|---|---|---|---|---|")
for name, e in m.items():
    if "reached_target" not in e:
        continue

    def f(v, nd=2):
        return "never" if v is None else f"{v:.{nd}f}"

    print(
        f"| {name} | {e['psnr_step0']:.2f} | {e['psnr_final']:.2f} | {f(e['time_to_target_s'])} "
        f"| {f(e['steps_to_target'], 1)} | {e['reached_target']}/{e['concepts_trained']} "
        f"| {rep['learning_rates'][name]:g} |"
    )


def times(k):
    return [r["methods"][k]["time_to_target_s"] for r in pc.values()]


print()
for fast in [k for k in ("generated", "blended", "refined", "nearest") if k in m]:
    for slow in ("scratch", "lora-zero"):
        s = speedups(times(slow), times(fast))
        goal = 15 if slow == "scratch" else 4.6
        at = sum(
            b is not None and (a is None or a / max(b, 1e-9) >= goal)
            for a, b in zip(times(slow), times(fast))
        )
        print(
            f"{fast} vs {slow}: median {s['median']:.2f}x, {fast} never {s['fast_never']}, "
            f"{slow} never {s['slow_never']}, at the paper's ratio or more on {at}/{len(pc)}"
        )
print()
s0 = rep["step0"]
for a in ("generated", "blended", "refined"):
    if a not in next(iter(s0.values())):
        continue
    for b in ("nearest", "mean", "generated"):
        if a != b:
            w = sum(r[a]["psnr"] > r[b]["psnr"] for r in s0.values()) / len(s0)
            print(f"step 0: {a} beats {b} on {100 * w:.0f}% of {len(s0)}")
print(
    "step 0 medians:",
    {k: round(v["psnr_step0"], 2) for k, v in m.items()},
)
for k, v in (rep.get("ablations") or {}).items():
    print(
        f"ablation {k}: step 0 {v['psnr_step0']:.2f}, beats nearest "
        f"{100 * v['beats_nearest']:.0f}%, mean {100 * v['beats_mean']:.0f}%"
    )
print()
names = [k for k in m if "reached_target" in m[k] and k != "scratch"]
print("concept".ljust(16), "target", *(n[:9].rjust(9) for n in ["scratch", *names]))
for cid, r in pc.items():
    row = [r["methods"][n]["time_to_target_s"] for n in ["scratch", *names]]
    print(
        cid.ljust(16),
        f"{r['target_psnr']:6.2f}",
        *("    never" if t is None else f"{t:9.2f}" for t in row),
    )
