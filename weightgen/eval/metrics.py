"""Figures over quality curves: time and steps to a target quality, medians, speed-ups.

A curve is a list of {"step", "time_s", "psnr", "ssim"} (training wall time, evaluation excluded),
step 0 first. A method that never reaches the target has None, never a number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def time_to_target(
    curve: Sequence[dict], target: float, *, metric: str = "psnr", offset_s: float = 0.0
) -> tuple[float | None, int | None]:
    """(seconds, steps) at the first evaluation whose `metric` >= target, else (None, None).

    `offset_s` is added to the time (e.g. the time to sample a generated initialisation)."""
    for p in curve:
        if p[metric] >= target:
            return p["time_s"] + offset_s, p["step"]
    return None, None


def median_or_none(values: Iterable[float | None]) -> float | None:
    """Median over concepts, a concept that never got there (None) counting as infinitely slow;
    None when that median is itself "never" (half of the concepts or more never got there)."""
    vals = [math.inf if v is None else float(v) for v in values]
    if not vals:
        return None
    m = statistics.median(vals)
    return m if math.isfinite(m) else None


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def speedups(slow: Sequence[float | None], fast: Sequence[float | None]) -> dict:
    """Per-concept ratios slow/fast over every concept where at least one method reached the
    target: fast never reaching counts as ratio 0 (it is slower than any finite time), slow never
    reaching as +inf. The median is None when it falls on +inf (only a lower bound is known) or
    when no concept has a ratio."""
    ratios, fast_never, slow_never = [], 0, 0
    for s, f in zip(slow, fast):
        if s is None and f is None:
            continue
        if f is None:
            ratios.append(0.0)
            fast_never += 1
        elif s is None:
            ratios.append(math.inf)
            slow_never += 1
        else:  # 0 when slow was there at step 0: a ratio of 0, not a "never"
            ratios.append(s / max(f, 1e-9))
    finite = [r for r in ratios if math.isfinite(r)]
    med = statistics.median(ratios) if ratios else None
    return {
        "median": med if med is not None and math.isfinite(med) else None,
        "min": min(ratios) if ratios else None,
        "max_finite": max(finite) if finite else None,
        "n": len(ratios),
        "of": len(slow),
        "fast_never": fast_never,
        "slow_never": slow_never,
    }


def paired_difference(ref: Sequence[float], other: Sequence[float]) -> dict:
    """`other` against `ref` on the same concepts (index i: one concept): the median of the
    per-concept differences other - ref and the share of concepts where other >= ref. The
    difference of two methods' medians compares two different middle concepts; this does not."""
    if len(ref) != len(other):
        raise ValueError(f"paired values differ in length: {len(ref)} vs {len(other)}")
    if not ref:
        return {"median_diff": None, "share_at_least": None, "n": 0}
    diffs = [o - r for r, o in zip(ref, other)]
    return {
        "median_diff": statistics.median(diffs),
        "share_at_least": sum(d >= 0 for d in diffs) / len(diffs),
        "n": len(diffs),
    }


# The early measurement steps. A crossing is timed at the first measurement at or above the
# target, so a gap of g steps can overstate a run's steps-to-target by up to g. Before, the early
# steps were 1, 2, 5, 10, 15, 20, 30, 40, 50 (a subset of these, so a curve measured here can be
# re-read on the old steps): a run that crossed at step 21 counted as 30 (+43%), while scratch's
# crossings near step 450 on a 25-step grid were overstated by at most ~6%. These keep the
# overstatement at or under ~20% from step 5 on, then `every` takes over after 50.
EARLY_STEPS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 18, 20, 22, 25, 28, 30, 33, 36, 40,
               45, 50)  # fmt: skip


def eval_schedule(max_steps: int, *, dense_until: int = 50, every: int = 25) -> list[int]:
    """Steps at which quality is measured: dense early (EARLY_STEPS up to `dense_until`, where a
    good initialisation shows), then every `every` steps up to `max_steps` (always included)."""
    early = [s for s in EARLY_STEPS if s <= min(dense_until, max_steps)]
    start = (dense_until // every + 1) * every
    return sorted({*early, *range(start, max_steps + 1, every), max_steps})


def plateau_quality(curve: Sequence[dict], *, metric: str = "psnr", last: int = 3) -> float:
    """A run's final quality: the median of its last `last` measurements, so one noisy GAN
    evaluation neither sets nor spoils the target."""
    if not curve:
        raise ValueError("empty curve")
    return statistics.median(p[metric] for p in curve[-last:])


def log_step_quality(curve: Sequence[dict], *, metric: str = "psnr") -> float:
    """Mean quality over log(step) from step 1 to the curve's last step (trapezoids between the
    measurements; step 0 cannot sit on a log axis and is left out). One number that rewards what
    the benchmark measures, reaching a quality early, and still counts the end: a run that
    collapses late loses the area it falls by. A curve with one measurement at or after step 1
    scores that measurement."""
    pts = [(math.log(p["step"]), float(p[metric])) for p in curve if p["step"] >= 1]
    if not pts:
        raise ValueError("no measurement at or after step 1")
    if len(pts) == 1 or pts[-1][0] == pts[0][0]:
        return pts[-1][1]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


# dB a run may end under its own peak before it counts as collapsed (`collapsed`; the benchmark's
# sweep ranks such rates last)
COLLAPSE_DB = 3.0


def collapsed(curve: Sequence[dict], *, drop: float = COLLAPSE_DB, metric: str = "psnr") -> bool:
    """True when the run's final quality (`plateau_quality`) ends more than `drop` below the best
    it measured: it diverged after a peak (a GAN fine-tune at too high a rate)."""
    return plateau_quality(curve, metric=metric) < max(p[metric] for p in curve) - drop


def plateaued(
    curve: Sequence[dict],
    *,
    patience_steps: int = 300,
    min_gain: float = 0.2,
    metric: str = "psnr",
) -> bool:
    """True when the best quality of the last `patience_steps` steps is less than `min_gain` above
    the best before them: the run has stopped improving. Needs a history longer than the window."""
    if not curve:
        return False
    now = curve[-1]["step"]
    before = [p[metric] for p in curve if p["step"] <= now - patience_steps]
    recent = [p[metric] for p in curve if p["step"] > now - patience_steps]
    if not before or not recent:
        return False
    return max(recent) < max(before) + min_gain
