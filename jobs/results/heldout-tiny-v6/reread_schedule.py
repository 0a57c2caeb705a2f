"""Re-read a benchmark report's curves on the earlier evaluation schedule (1, 2, 5, 10, 15, 20,
30, 40, 50, then every 25): the same runs, only the crossings read on fewer steps. Prints both
schedules' medians of time to target and speed-ups side by side.

    python jobs/results/heldout-tiny-v6/reread_schedule.py runs/v3/report-tn50
"""

import json
import sys
from pathlib import Path

from weightgen.eval.metrics import EARLY_STEPS, median_or_none, speedups, time_to_target

OLD_EARLY = {1, 2, 5, 10, 15, 20, 30, 40, 50}  # a subset of EARLY_STEPS


def old_step(step: int, last: int) -> bool:
    """A measurement the old schedule also made: step 0, an old early step, the every-25 tail
    (every step outside EARLY_STEPS) and the run's last step."""
    return step == 0 or step in OLD_EARLY or step not in EARLY_STEPS or step == last


def main(report_dir: str) -> dict:
    rep = json.loads((Path(report_dir) / "report.json").read_text())
    out = {}
    for name, keep in (("new", lambda s, last: True), ("old", old_step)):
        times = {}
        for cid, runs in rep["runs"].items():
            target = rep["per_concept"][cid]["target_psnr"]
            for m, r in runs.items():
                last = r["curve"][-1]["step"]
                curve = [p for p in r["curve"] if keep(p["step"], last)]
                t, _ = time_to_target(curve, target, offset_s=r.get("offset_s", 0.0))
                times.setdefault(m, []).append(t)
        out[name] = {
            "median_time_to_target_s": {m: median_or_none(v) for m, v in times.items()},
            "vs_scratch": speedups(times["scratch"], times["generated"]),
            "vs_lora_zero": speedups(times["lora-zero"], times["generated"]),
        }
    return out


if __name__ == "__main__":
    res = main(sys.argv[1])
    for name, r in res.items():
        t = {
            m: round(v, 3) if v is not None else None
            for m, v in r["median_time_to_target_s"].items()
        }
        print(f"{name} schedule: median time to target {t}")
        print(f"  speed-up vs scratch {r['vs_scratch']['median']}  vs lora-zero "
              f"{r['vs_lora_zero']['median']}")  # fmt: skip
