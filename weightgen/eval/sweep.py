"""Learning rates chosen on the validation split (training concepts never collected; never held-out
or novel ones): each method's rate from a sweep, cached per method in sweep.json under the
settings it depends on; each of its fine-tunes is saved as it finishes (OUT/sweep/), so a sweep
cut short resumes."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weightgen.config import BLENDED, PICKED, REFINED, BenchConfig
from weightgen.eval.context import BenchContext
from weightgen.eval.finetunes import FinetuneCache, concept_runs
from weightgen.eval.inits import Choices, method_inits, tuning_concepts
from weightgen.eval.metrics import COLLAPSE_DB
from weightgen.pool import run_resumable

SWEEP_CRITERION = (
    "median log-step quality; "
    f"rates with a collapsed run (end > {COLLAPSE_DB:g} dB under peak) last"
)


def choose_rate(cells: dict[str, dict]) -> float:
    """The rate (keys: repr of a float) with the best median log-step quality among those with no
    collapsed run; if every rate collapsed somewhere, the best score among all of them."""
    stable = {k: v for k, v in cells.items() if not v["collapsed"]} or cells
    return float(max(stable, key=lambda k: stable[k]["score"]))


def sweep_keys(
    ctx: BenchContext, cfg: BenchConfig, methods: Sequence[str], choices: Choices
) -> dict[str, dict]:
    """What each method's sweep result depends on; a cached row is reused only under its own key,
    so a retrained generator re-sweeps `generated` alone, not the baselines."""
    from weightgen.initial import PICK_BLENDS, PICK_SCALES

    common = {
        "run": str(Path(ctx.run).resolve()),
        "sweep_lrs": list(cfg.sweep_lrs),
        "sweep_concepts": cfg.sweep_concepts,
        "sweep_steps": cfg.sweep_steps,
        "eval_every": cfg.eval_every,
        "seed": cfg.seed,
        "criterion": SWEEP_CRITERION,
    }
    gen = {
        # the generator's identity: a retrained one is swept again
        "generator": [
            ctx.bundle.meta.get("layout_hash"),
            (ctx.bundle.meta.get("summary") or {}).get("steps"),
            (ctx.bundle.meta.get("summary") or {}).get("final_loss"),
        ],
        "sample_steps": cfg.sample_steps,
        "empty_text": cfg.empty_text,
    }
    common["concepts"] = choices.concepts
    own = {
        "generated": gen,
        "random-text": gen,
        REFINED: {**gen, "refine_strength": cfg.refine_strength},
        BLENDED: {**gen, "blend": choices.blend},
        PICKED: {
            **gen,
            "best_pairs": cfg.best_pairs,
            "pick": [list(PICK_BLENDS), list(PICK_SCALES)],
        },
        "nearest-noise": {**gen, "noise": choices.noise},
        "knn-blend": {"knn_k": choices.knn_k},
        "best-by-loss": {"best_pairs": cfg.best_pairs},
    }
    return {m: {**common, **own.get(m, {})} for m in methods}


def _resumable(jobs: list[dict], keys: dict, todo: list[str], out: Path, workers: int) -> list:
    """concept_runs of every sweep job, each saved as it finishes (OUT/sweep/CONCEPT-LR-KEY.json,
    {"key", "runs"}) and reused under the same key (the swept methods' `sweep_keys`, the concept
    and the rate), so a sweep cut short goes on where it stopped."""
    folder = out / "sweep"
    names, job_keys, results = [], [], []
    for job in jobs:
        lr = job["lrs"][todo[0]]
        part = {"keys": {m: keys[m] for m in todo}, "concept": job["concept_id"], "lr": repr(lr)}
        job_keys.append(FinetuneCache.job_key(part))
        names.append(f"{job['concept_id']}-{lr!r}-{job_keys[-1][:12]}.json")
        try:
            rec = json.loads((folder / names[-1]).read_text())
        except (OSError, ValueError):
            rec = {}
        results.append({"runs": rec["runs"]} if rec.get("key") == job_keys[-1] else None)

    def save(i: int, res: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{names[i]}.tmp"
        tmp.write_text(json.dumps({"key": job_keys[i], "runs": res["runs"]}) + "\n")
        os.replace(tmp, folder / names[i])

    return run_resumable(concept_runs, jobs, results, save=save, workers=workers, desc="lr sweep")


def sweep_learning_rates(ctx: BenchContext, cfg: BenchConfig, out: Path, choices: Choices) -> dict:
    """Best rate per method on validation concepts. Cached in out/sweep.json per method: a method
    whose settings (`sweep_keys`) are unchanged keeps its row and is not trained again."""
    from weightgen.eval.metrics import collapsed, log_step_quality, median, plateau_quality

    methods = [m for m in cfg.trained if m not in cfg.lrs]
    keys = sweep_keys(ctx, cfg, methods, choices)
    if not methods or cfg.sweep_concepts == 0:
        return {"keys": keys, "best": {}, "table": {}}
    path = out / "sweep.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    table: dict[str, dict[str, Any]] = {
        m: cached["table"][m]
        for m in methods
        if (cached.get("keys") or {}).get(m) == keys[m] and m in (cached.get("table") or {})
    }
    todo = [m for m in methods if m not in table]
    if not todo:
        best = {m: choose_rate(table[m]) for m in methods}
        return {"keys": keys, "concepts": cached["concepts"], "best": best, "table": table}
    # one validation concept from each of k families spread evenly over the catalogue's order
    # (never a held-out or novel one), so the rates are not tuned on the colour families alone
    first, _ = tuning_concepts(ctx.preset)
    k = min(cfg.sweep_concepts, len(first))
    picks = [first[(i * len(first)) // k] for i in range(k)]
    tb = ctx.enc.encode([c.text for c in picks])
    inits, _, _ = method_inits(ctx, picks, todo, cfg, choices)
    jobs = []
    for i, c in enumerate(picks):
        for lr in cfg.sweep_lrs:
            jobs.append(
                dict(
                    preset=ctx.preset,
                    base_state=ctx.base_state,
                    concept_id=c.id,
                    tokens=tb.tokens[i],
                    mask=tb.mask[i],
                    inits={m: inits[m][i] for m in todo},
                    lrs={m: lr for m in todo},
                    # the LoRA methods run every sweep step (no plateau stop), so a collapse
                    # late in the budget is seen
                    cfg=dataclasses.replace(
                        cfg,
                        lora_steps=cfg.sweep_steps,
                        scratch_max_steps=cfg.sweep_steps,
                        hard_max_steps=0,
                        lora_plateau=False,
                    ),
                    preview=0,
                )
            )
    results = _resumable(jobs, keys, todo, out, cfg.workers)
    for m in todo:
        table[m] = {}
        for lr in cfg.sweep_lrs:
            curves = [
                res["runs"][m]["curve"] for res, job in zip(results, jobs) if job["lrs"][m] == lr
            ]
            table[m][repr(lr)] = {
                "score": median(log_step_quality(c) for c in curves),
                "final": median(plateau_quality(c) for c in curves),
                "collapsed": sum(collapsed(c) for c in curves),
            }
    table = {m: table[m] for m in methods}  # report order
    best = {m: choose_rate(table[m]) for m in methods}
    out.mkdir(parents=True, exist_ok=True)
    result = {"keys": keys, "concepts": [c.id for c in picks], "best": best, "table": table}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result
