"""A benchmark report's figures recomputed on another report's fine-tuned concepts, so a 26-concept
run can be read beside an all-57 one: the same `summarise` the benchmark uses, on a subset of runs.

    python jobs/results/heldout-tiny-v9/subset.py REPORT_A REPORT_B

Prints, for A restricted to B's concepts and for B: per method final PSNR, median time and steps
to target, concepts reaching it; the median speed-ups and how many concepts reach >= 15x.
"""

import json
import sys
from pathlib import Path

from weightgen.eval.report import summarise

METHODS = ("scratch", "lora-zero", "generated", "nearest", "mean")


def figures(report: dict, ids: list[str]) -> dict:
    runs = {c: report["runs"][c] for c in ids}
    step0 = {c: report["step0"][c] for c in ids}
    return summarise(step0, runs)


def fmt(v, f="{:.2f}") -> str:
    return "never" if v is None else f.format(v)


def main(a: str, b: str) -> None:
    ra, rb = (json.loads((Path(d) / "report.json").read_text()) for d in (a, b))
    ids = list(rb["runs"])
    missing = [c for c in ids if c not in ra["runs"]]
    if missing:
        raise SystemExit(f"{a} lacks {len(missing)} of {b}'s concepts, e.g. {missing[:3]}")
    sa, sb = figures(ra, ids), figures(rb, ids)
    print(f"{len(ids)} concepts: A = {a}, B = {b}")
    print("| method | step-0 PSNR A / B | final PSNR A / B | s to target A / B | steps A / B |")
    print("|---|---|---|---|---|")
    for m in METHODS:
        x, y = sa["methods"][m], sb["methods"][m]
        print(
            f"| {m} | {fmt(x['psnr_step0'])} / {fmt(y['psnr_step0'])} "
            f"| {fmt(x['psnr_final'])} / {fmt(y['psnr_final'])} "
            f"| {fmt(x.get('time_to_target_s'))} / {fmt(y.get('time_to_target_s'))} "
            f"| {fmt(x.get('steps_to_target'), '{:.0f}')} / "
            f"{fmt(y.get('steps_to_target'), '{:.0f}')} |"
        )
    for k in ("vs_scratch", "vs_lora_zero"):
        print(f"speed-up {k}: A {fmt(sa['speedup'][k])}  B {fmt(sb['speedup'][k])}")
    for name, s in (("A", sa), ("B", sb)):
        rows = s["per_concept"].values()
        fast = 0
        for r in rows:
            t_s = r["methods"]["scratch"]["time_to_target_s"]
            t_g = r["methods"]["generated"]["time_to_target_s"]
            fast += t_g is not None and t_s is not None and (t_g == 0 or t_s / t_g >= 15)
        never = sum(r["methods"]["generated"]["time_to_target_s"] is None for r in rows)
        print(f"{name}: >= 15x vs scratch on {fast}/{len(ids)}; generated never reaches on {never}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
