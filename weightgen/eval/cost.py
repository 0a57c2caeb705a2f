"""The one-off cost of a generator (base, collection, sensitivity, training, a warm start's own
cost) and after how many new concepts the time it saves pays it back."""

from __future__ import annotations

import json
from pathlib import Path

from weightgen.errors import WeightgenError


def logged_train_seconds(gen_dir: Path, steps: int, batch: int) -> float | None:
    """Seconds the generator's training steps took, summed over its train_log.jsonl (every
    resumed segment included: each row logs the samples per second since the previous row;
    `batch` samples per step, fixed over resumes). None when the log does not cover steps
    1..`steps` (missing, trimmed or started elsewhere)."""
    path = Path(gen_dir) / "train_log.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    total, prev = 0.0, 0
    for r in rows:
        sps = r.get("samples_per_s")
        if not sps or r["step"] <= prev:
            return None
        total += (r["step"] - prev) * batch / sps
        prev = r["step"]
    return total if rows and prev == steps else None


def one_off_cost(
    run: Path, bundle_meta: dict, gen_dir: Path | None = None, _chain: tuple[Path, ...] = ()
) -> dict:
    """Seconds spent once: base pre-training + collection (sum of per-concept training times of the
    accepted concepts, so cluster width does not flatter it) + the sensitivity measurement when the
    generator's loss used it + generator training (from `gen_dir`'s train_log.jsonl when it
    covers every step, resumed segments included; else the export's summary, a resumed run's
    seconds scaled to all its steps)."""
    from weightgen.data import iter_samples

    base = json.loads((run / "base" / "metrics.json").read_text()).get("seconds")
    collect = 0.0
    n = 0
    for s in iter_samples(str(run / "dataset")):
        collect += float(s.meta.get("metrics", {}).get("train_seconds", 0.0))
        n += 1
    summ = bundle_meta.get("summary") or {}
    batch = (bundle_meta.get("train_config") or {}).get("batch_size")
    gen = None
    if gen_dir is not None and batch:
        gen = logged_train_seconds(gen_dir, summ.get("steps", -1), batch)
    source = "train_log" if gen is not None else "summary"
    if gen is None:
        gen = summ.get("seconds")
        if gen is not None and summ.get("resumed_from"):  # a resumed run timed its own steps only
            done = summ.get("steps", 0) - summ["resumed_from"]
            gen = gen * summ["steps"] / done if done > 0 else None
            source = "summary, scaled from the resumed steps"
    sens = None
    if (bundle_meta.get("train_config") or {}).get("loss_weight") == "sensitivity":
        from weightgen.data.sensitivity import sensitivity_seconds

        sens = sensitivity_seconds(str(run / "dataset"))
    # a warm-started generator (train --init) also cost everything its initialisation cost
    init, init_cost = (bundle_meta.get("train_config") or {}).get("init_from"), None
    if init:
        init_cost = _init_generator_cost(Path(init), _chain + ((gen_dir or run).resolve(),))
    init_s = None if init_cost is None else init_cost["total_s"]
    total = sum(v for v in (base, collect, sens, gen, init_s) if v is not None)
    return {
        "base_s": base,
        "collection_s": collect,
        "collection_concepts": n,
        "sensitivity_s": sens,
        "generator_s": gen,
        "generator_s_from": source,
        "init_generator": init,
        "init_generator_s": init_s,
        "init_generator_cost": init_cost,
        "total_s": total,
    }


def _init_generator_cost(gen_dir: Path, chain: tuple[Path, ...]) -> dict:
    """The one-off cost of the generator a run was warm-started from: its own run's base,
    collection, sensitivity and training (and its own initialisation, recursively). The run is
    the local folder holding the data set it was trained on (RUN/dataset next to RUN/base).
    `chain`: the generators already counted (a warm start from itself is an error, not a loop)."""
    if gen_dir.resolve() in chain:
        raise WeightgenError(
            f"the warm-start chain returns to {gen_dir} (a generator started from its own "
            "folder): the cost of what it overwrote cannot be counted"
        )
    meta_path = gen_dir / "generator.json"
    if not meta_path.is_file():
        raise WeightgenError(
            f"the generator was warm-started from {gen_dir}, which is gone: its one-off cost "
            "cannot be counted (restore it or evaluate another generator)"
        )
    meta = json.loads(meta_path.read_text())
    run = Path(str(meta.get("dataset", "")).removeprefix("file://")).parent
    if not (run / "base" / "metrics.json").is_file():
        raise WeightgenError(
            f"the generator {gen_dir} was trained on {meta.get('dataset')!r}, not a local run "
            "folder with base/: its one-off cost cannot be counted"
        )
    return one_off_cost(run, meta, gen_dir, chain)


def cost_line(cost: dict) -> str:
    return (
        f"{cost['total_s']:.0f} s (base {cost['base_s'] or 0:.0f}, collection "
        f"{cost['collection_s']:.0f} over {cost['collection_concepts']} concepts, "
        + (f"sensitivity {cost['sensitivity_s']:.0f}, " if cost.get("sensitivity_s") else "")
        + f"generator {cost['generator_s'] or 0:.0f}"
        + (
            f", warm start from {cost['init_generator']}: {cost['init_generator_s']:.0f})"
            if cost.get("init_generator")
            else ")"
        )
    )


def payback(methods: dict, cost: dict) -> dict:
    """Median seconds saved per new concept against scratch and lora-zero, and after how many
    new concepts the one-off cost is paid back (None: no time saved)."""
    saved = {}
    for ref in ("scratch", "lora-zero"):
        a = methods.get(ref, {}).get("time_to_target_s")
        b = methods.get("generated", {}).get("time_to_target_s")
        per = None if a is None or b is None else a - b
        saved[ref] = {
            "seconds_saved_per_concept": per,
            "payback_concepts": None if not per or per <= 0 else cost["total_s"] / per,
        }
    return saved


def _payback(n: float | None) -> str:
    return "never (no time saved)" if n is None else f"{n:.0f}"


def payback_line(saved: dict) -> str:
    return ", ".join(f"vs {k} {_payback(v['payback_concepts'])}" for k, v in saved.items())
