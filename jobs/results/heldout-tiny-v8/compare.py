"""Two benchmark reports on the same concepts side by side: headline figures per method and the
speed-up per concept.

    python jobs/results/heldout-tiny-v8/compare.py REPORT_A REPORT_B [--per-concept]

Session 8: runs/v7/report-w-all (sweep scored on final PSNR, 200 steps) against
runs/v7/report-w8-all (sweep scored on PSNR over log(step), 600 steps); same generator.
"""

import json
import sys
from pathlib import Path

METHODS = ("scratch", "lora-zero", "generated", "nearest", "mean")


def load(d: str) -> dict:
    return json.loads((Path(d) / "report.json").read_text())


def fmt(v, f="{:.2f}") -> str:
    return "never" if v is None else f.format(v)


def main(a: str, b: str, per_concept: bool) -> None:
    ra, rb = load(a), load(b)
    print(f"{'':24s} {'A':>22s} {'B':>22s}")
    for m in METHODS:
        for k, f in (("psnr_final", "{:.2f}"), ("time_to_target_s", "{:.2f}"),
                     ("steps_to_target", "{:.0f}"), ("reached_target", "{}")):  # fmt: skip
            print(f"{m + ' ' + k:40s} {fmt(ra['methods'][m].get(k), f):>8s} "
                  f"{fmt(rb['methods'][m].get(k), f):>8s}")  # fmt: skip
    for m in METHODS:
        print(f"lr {m:20s} {ra['learning_rates'][m]:>8g} {rb['learning_rates'][m]:>8g}")
    for k in ("vs_scratch", "vs_lora_zero"):
        sa, sb = ra["speedup"], rb["speedup"]
        print(f"speed-up {k:15s} {fmt(sa[k]):>8s} {fmt(sb[k]):>8s}  "
              f"never A {sa[k + '_spread']['fast_never']} B {sb[k + '_spread']['fast_never']}")  # fmt: skip
    for name, r in (("A", ra), ("B", rb)):
        sp = [_speedup(d) for d in r["per_concept"].values()]
        print(f"{name}: concepts at >= 15x vs scratch: {sum(s >= 15 for s in sp)}/{len(sp)}")
    if per_concept:
        print(f"\n{'concept':16s} {'target A':>8s} {'target B':>8s} {'x A':>8s} {'x B':>8s}")
        for cid in ra["per_concept"]:
            da, db = ra["per_concept"][cid], rb["per_concept"].get(cid)
            if db is None:
                continue
            print(f"{cid:16s} {da['target_psnr']:8.2f} {db['target_psnr']:8.2f} "
                  f"{_speedup(da):8.1f} {_speedup(db):8.1f}")  # fmt: skip


def _speedup(d: dict) -> float:
    """scratch / generated time to target; 0 when generated never gets there."""
    s = d["methods"]["scratch"]["time_to_target_s"]
    g = d["methods"]["generated"]["time_to_target_s"]
    return 0.0 if g is None or s is None else (float("inf") if g == 0 else s / g)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--per-concept" in sys.argv)
