"""The held-out benchmark (`weightgen evaluate`): its run (`run_benchmark`: step 0, the sweep, the
fine-tunes, the report and ablation rows) and `render_report`. The protocol and what each step
measures: weightgen.eval.protocol; the report contract: docs/design.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from weightgen.config import BLENDED, PICKED, REFINED, BenchConfig, Preset
from weightgen.errors import WeightgenError
from weightgen.eval.ablations import (
    PICK,
    SAMPLING,
    ablation_generator,
    blend_weight,
    refine_strength,
    step0_row,
)
from weightgen.eval.context import BenchContext, step0_table
from weightgen.eval.cost import cost_line, one_off_cost, payback, payback_line
from weightgen.eval.finetunes import concept_runs
from weightgen.eval.protocol import select_concepts
from weightgen.eval.report import append_sections
from weightgen.eval.sweep import sweep_learning_rates
from weightgen.pool import run_resumable

STEP0_ONLY = "none: step 0 only, no concept fine-tuned"


def check_family_left_out(splits, split: str, run_dataset: Path, gen_meta: dict) -> None:
    """A family:F split measures a run whose retrieval data set and generator never saw F: both
    must be derived without every operation of F (the generator's as its generator.json records,
    or, for one trained before it did, as its data set's manifest says)."""
    from weightgen.data import read_manifest

    family = split.removeprefix("family:")
    need = splits.family_ops(family)
    fix = (
        "evaluate a run whose data set and generator come from "
        f"`weightgen derive --drop-family {family}`"
    )
    if not need <= set(read_manifest(str(run_dataset)).extra.get("dropped_ops", ())):
        raise WeightgenError(f"split {split}: data set {run_dataset} holds its concepts; {fix}")
    if "dropped_ops" in gen_meta:
        dropped = set(gen_meta["dropped_ops"])
    else:
        uri = gen_meta.get("dataset")
        if not uri or not (Path(uri) / "manifest.json").is_file():
            raise WeightgenError(
                f"split {split}: the generator's data set {uri} is not here, so nothing tells "
                f"whether it left {family} out; derive it again there, or {fix}"
            )
        dropped = set(read_manifest(str(uri)).extra.get("dropped_ops", ()))
    if not need <= dropped:
        raise WeightgenError(f"split {split}: the generator was trained on its concepts; {fix}")


# BenchConfig fields a fine-tuned concept's runs do not depend on (`pick` adds a method, which
# the key holds in `methods`; left out, a run keyed before the field existed keeps its key)
_UNKEYED = ("workers", "concepts", "step0_concepts", "sweep_concepts", "pick")


def run_benchmark(
    run: str | Path,
    out: str | Path,
    cfg: BenchConfig | None = None,
    *,
    generator: str | Path | None = None,
    ablations: Sequence[str] = (),
    title: str = "weightgen held-out benchmark (tiny preset)",
) -> dict:
    from weightgen.concepts import Splits, interleave
    from weightgen.eval.finetunes import FinetuneCache
    from weightgen.eval.inits import method_inits, tune_choices
    from weightgen.eval.report import save_image_grid, summarise, write_report

    cfg = cfg or BenchConfig()
    run, out = Path(run), Path(out)
    # the splits are the run's own (its base's recipe): checked before anything loads
    splits = Splits.of(Preset.load(run / "base" / "config.json"))
    held = splits.concepts(cfg.split)
    if cfg.step0_concepts is not None:  # a subset spread over the families
        held = interleave(held)[: cfg.step0_concepts]
    if not held:
        field = "validation_per_family" if cfg.split == "validation" else "novel_families"
        raise WeightgenError(
            f"the recipe's {cfg.split} split is empty: the run's base was trained with no "
            f"[split] {field}"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    ctx = BenchContext(run, Path(generator) if generator else None, cfg.empty_text)
    if cfg.split.startswith("family:"):
        check_family_left_out(splits, cfg.split, run / "dataset", ctx.bundle.meta)
    preset = ctx.preset
    methods = cfg.trained
    initialised = [m for m in methods if m not in ("scratch", "lora-zero")]

    # 0. the tuned choices (k, blend weight, noise scale) on the validation split
    choices = tune_choices(ctx, cfg, methods)

    # 1. step 0 of every method on every evaluated concept; best-by-loss (a forward pass of every
    # training LoRA per concept) only on the concepts that are fine-tuned
    chosen = select_concepts(held, cfg.per_family, cfg.skip_per_family) if cfg.finetune else []
    chosen = chosen[: cfg.concepts]
    step0_methods = list(dict.fromkeys(["generated", "nearest", "mean", *initialised]))
    costly = [m for m in step0_methods if m == "best-by-loss"]
    cheap = [m for m in step0_methods if m not in costly]
    inits, offsets, info = method_inits(ctx, held, cheap, cfg, choices)
    if costly:
        at = [held.index(c) for c in chosen]
        ci, co, cn = method_inits(ctx, chosen, costly, cfg, choices)
        for m in costly:
            inits[m], offsets[m], info[m] = [None] * len(held), [0.0] * len(held), [{}] * len(held)
            for j, i in enumerate(at):
                inits[m][i], offsets[m][i], info[m][i] = ci[m][j], co[m][j], cn[m][j]
    per_text_s = offsets["generated"][0]
    # one uncached concept alone (the timed call: encoding, describing pairs, sampling)
    _, one_s = ctx.generate([held[0].text + " "], cfg.sample_steps, concepts=held[:1])
    tb = ctx.enc.encode([c.text for c in held])
    nearest_of = {
        c.id: {"lora": inits["nearest"][i], **info["nearest"][i]} for i, c in enumerate(held)
    }
    extra_step0 = {m: inits[m] for m in step0_methods if m not in ("generated", "nearest", "mean")}
    step0 = step0_table(ctx, held, inits["generated"], tb, nearest_of, extra_step0)

    # 2. learning rates from the validation split
    if cfg.finetune:
        sweep = sweep_learning_rates(ctx, cfg, out, choices)
    else:
        sweep = {"best": {}, "table": {}}
    lrs = {m: cfg.lrs.get(m, sweep["best"].get(m, preset.concept.lr)) for m in methods}

    # 3. fine-tunes, each concept saved as it finishes (a rerun resumes)
    cache = FinetuneCache(out)
    jobs, keys = [], []
    for c in chosen:
        i = held.index(c)
        jobs.append(
            dict(
                preset=preset,
                base_state=ctx.base_state,
                concept_id=c.id,
                tokens=tb.tokens[i],
                mask=tb.mask[i],
                inits={m: inits[m][i] if m in inits else None for m in methods},
                lrs=lrs,
                cfg=cfg,
                offsets={m: offsets[m][i] for m in initialised},
            )
        )
        keys.append(
            cache.job_key(
                {
                    "concept": c.id,
                    "methods": methods,
                    "lrs": lrs,
                    "choices": [choices.knn_k, choices.blend, choices.noise],
                    "generator": ctx.bundle.meta.get("summary"),
                    "run": str(run.resolve()),
                    "bench": {k: v for k, v in cfg.to_dict().items() if k not in _UNKEYED},
                }
            )
        )
    results = run_resumable(
        concept_runs, jobs, [cache.get(c.id, k) for c, k in zip(chosen, keys)],
        save=lambda i, res: cache.put(chosen[i].id, keys[i], res), workers=cfg.workers,
        desc="fine-tune",
    )  # fmt: skip
    runs = {c.id: res["runs"] for c, res in zip(chosen, results)}

    # 4. report
    summary = summarise(step0, runs)
    if cfg.fid_weights and results:
        from weightgen.eval.fid import pooled_fid

        fids = pooled_fid(cfg.fid_weights, [r["preview"]["all"] for r in results], methods)
        for m_, v in fids.items():
            summary["methods"][m_]["fid_final"] = v
    columns = ["input", "target"] + [f"{m} {w}" for m in methods for w in ("0", "end")]
    rows = []
    for c, res in zip(chosen, results):
        p = res["preview"]
        imgs = [p["input"][0], p["target"][0]]
        for m in methods:
            imgs += [p[m]["start"][0], p[m]["end"][0]]
        rows.append((c.id, imgs))
    if rows:
        # one grid per concept (grids/ID.png) and the first six together in the report
        for row in rows:
            save_image_grid(out / "grids" / f"{row[0]}.png", [row], columns)
        save_image_grid(out / "grid.png", rows[:6], columns)

    # 5. ablation rows (step-0 quality of each generator variant on every held-out concept)
    ablation_rows = {}
    if ablations:
        ablation_rows["reference"] = step0_row(ctx, held, sample_steps=cfg.sample_steps)
        for name in ablations:
            if refine_strength(name) is not None:
                row = step0_row(
                    ctx, held, sample_steps=cfg.sample_steps, refine=refine_strength(name)
                )
            elif name == PICK:
                row = step0_row(ctx, held, sample_steps=cfg.sample_steps, pick=True)
            elif blend_weight(name) is not None:
                row = step0_row(ctx, held, sample_steps=cfg.sample_steps, blend=blend_weight(name))
            elif name in SAMPLING:
                spec = SAMPLING[name]
                actx = ctx.with_generator(
                    Path(generator) if generator else run / "generator",
                    empty_text=spec.get("empty_text", cfg.empty_text),
                )
                row = step0_row(actx, held, sample_steps=spec.get("sample_steps", cfg.sample_steps))
            else:
                gdir = ablation_generator(run, out, name, ctx.bundle.meta)
                row = step0_row(ctx.with_generator(gdir), held, sample_steps=cfg.sample_steps)
            ablation_rows[name] = row

    m = summary["methods"]

    def win_rate(a: str, refs: Sequence[str]) -> dict[str, float]:
        n = len(step0)
        return {k: sum(step0[c][a]["psnr"] > step0[c][k]["psnr"] for c in step0) / n for k in refs}

    wins = win_rate("generated", ("base", "lora-zero", "mean", "nearest"))
    # the opt-in methods (refined, blended, picked): their step-0 wins and how the headline
    # names them
    extra_wins = {
        k: win_rate(k, ("generated", "mean", "nearest"))
        for k in extra_step0
        if k in (REFINED, BLENDED, PICKED)
    }

    def extra_label(k: str) -> str:
        if k == REFINED:
            return f"refined (nearest LoRA, one step from strength {cfg.refine_strength:g})"
        if k == PICKED:
            return "picked (the start with the lowest loss on the concept's training pairs)"
        return f"blended ({choices.blend:g} generated + {1 - choices.blend:g} nearest)"

    def target_line(t: str) -> str:
        e = summary["targets"][t]["methods"].get("generated") if summary["targets"] else None
        if not e:
            return "—"

        def sp(key):
            v = e.get(key)
            if not v or v["median"] is None:
                return "—"
            lo, hi = v["ci95"]["low"], v["ci95"]["high"]
            return f"{v['median']:.1f}× ({'—' if lo is None else f'{lo:.1f}'}–" + (
                f"{'—' if hi is None else f'{hi:.1f}'})"
            )

        near = summary["targets"][t]["methods"].get("nearest", {}).get("generated_vs_this")
        vs_near = (
            f"; vs nearest {near['wins']} wins / {near['losses']} losses, p = {near['p']:.3g}"
            if near
            else ""
        )
        return (
            f"{sp('vs_scratch')} vs scratch, {sp('vs_lora_zero')} vs lora-zero, never reached "
            f"on {e['time_s']['never']} of {e['concepts']}{vs_near}"
        )

    def tuned_line() -> str:
        parts = []
        if "knn-blend" in methods:
            parts.append(f"knn-blend k = {choices.knn_k}")
        if BLENDED in methods:
            parts.append(f"blend weight {choices.blend:g}")
        if "nearest-noise" in methods:
            parts.append(
                f"nearest-noise scale {choices.noise:.3g} std (the generator's median distance "
                "from the nearest LoRA)"
            )
        return ", ".join(parts) or "nothing (no tuned method)"

    def shares(w: dict[str, float]) -> str:
        return ", ".join(f"{k} {100 * v:.0f}%" for k, v in w.items())

    cost = one_off_cost(run, ctx.bundle.meta, Path(generator) if generator else run / "generator")
    saved = payback(m, cost)
    extra = {
        "config": cfg.to_dict(),
        "split": {"evaluated": cfg.split, **splits.describe()},
        "choices": choices.to_dict(),
        "inits": {m: {c.id: x for c, x in zip(held, v) if x} for m, v in info.items() if any(v)},
        "learning_rates": lrs,
        "sweep": sweep,
        "one_off_cost": cost,
        "payback": saved,
        "text_to_lora_s": {"one": one_s, "per_concept_in_batch": per_text_s, "batch": len(held)},
        "generated_step0_win_rate": wins,
        **{f"{k}_step0_win_rate": w for k, w in extra_wins.items()},
        "nearest": {
            k: {kk: v[kk] for kk in ("concept", "similarity")} for k, v in nearest_of.items()
        },
        "generator": ctx.bundle.meta,
        "ablations": ablation_rows,
        "runs": runs,
        "headline": {
            **(
                {
                    cfg.split: "concepts for choosing recipes and levers, not a result (its "
                    "tuned choices come from these same concepts)"
                }
                if cfg.split == "validation" or cfg.split.startswith("family:")
                else {}
            ),
            f"{cfg.split} concepts": f"{len(held)} at step 0, {len(chosen)} fine-tuned "
            f"({cfg.per_family} per family"
            + (f" after the first {cfg.skip_per_family}" if cfg.skip_per_family else "")
            + ")"
            + (
                f"; novel families (unseen by every training stage): "
                f"{', '.join(splits.novel_families)}"
                if splits.novel_families
                else ""
            ),
            "generated to the paper's target (scratch's plateau), median (95% CI)": target_line(
                "paper"
            ),
            "generated to the hard target (lora-zero's plateau), median (95% CI)": target_line(
                "hard"
            ),
            "step-0 PSNR, median": ", ".join(
                f"{k} {v['psnr_step0']:.2f}" for k, v in m.items() if v.get("psnr_step0")
            ),
            "generated PSNR at step 0 (median)": f"{m['generated']['psnr_step0']:.2f} dB vs base "
            f"{m['base']['psnr_step0']:.2f}, mean {m['mean']['psnr_step0']:.2f}, nearest "
            f"{m['nearest']['psnr_step0']:.2f}",
            "generated beats at step 0 (share of concepts)": shares(wins),
            **{
                f"{extra_label(k)} at step 0": f"median {m[k]['psnr_step0']:.2f} dB; beats "
                + shares(w)
                for k, w in extra_wins.items()
            },
            "learning rates (sweep on the validation split)": (
                ", ".join(f"{k} {v:g}" for k, v in lrs.items()) if runs else STEP0_ONLY
            ),
            f"tuned on the {choices.source}": tuned_line(),
            "one-off cost": cost_line(cost),
            "paid back after (new concepts)": payback_line(saved) if runs else STEP0_ONLY,
            **(
                {
                    "FID at the end (pooled evaluation images, torchmetrics)": ", ".join(
                        f"{k} {v['fid_final']:.2f}" for k, v in m.items() if "fid_final" in v
                    )
                }
                if cfg.fid_weights and results
                else {}
            ),
            "text -> LoRA": f"{one_s:.3f} s for one concept, {per_text_s:.4f} s per concept in a "
            f"batch of {len(held)}",
        },
    }
    write_report(out, summary, runs=runs, extra=extra, title=title)
    append_sections(out / "report.md", extra)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return {"summary": summary, **extra}


def render_report(
    out: str | Path,
    title: str = "weightgen held-out benchmark (tiny preset)",
    *,
    run: str | Path | None = None,
    generator: str | Path | None = None,
):
    """Rewrite OUT's report.md, report.json and plots from its report.json (no training): for a
    report written before a change to how it is summarised. With `run` and `generator`, the
    one-off cost is measured again from them."""
    from weightgen.eval.report import summarise, write_report

    out = Path(out)
    try:
        old = json.loads((out / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise WeightgenError(f"no readable report.json in {out}: {e}") from None
    runs, step0 = old["runs"], old["step0"]
    summary = summarise(step0, runs)
    for m_, v in old.get("methods", {}).items():  # FID is not recomputed
        if "fid_final" in v and m_ in summary["methods"]:
            summary["methods"][m_]["fid_final"] = v["fid_final"]
    extra = {k: v for k, v in old.items() if k not in summary}  # the rest came from the run
    if run is not None and generator is not None:
        from weightgen.diffusion.sampler import GENERATOR_JSON

        meta = json.loads((Path(generator) / GENERATOR_JSON).read_text())
        extra["one_off_cost"] = one_off_cost(Path(run), meta, Path(generator))
        extra["headline"]["one-off cost"] = cost_line(extra["one_off_cost"])
    extra["payback"] = payback(summary["methods"], extra["one_off_cost"])
    if runs:
        extra["headline"]["paid back after (new concepts)"] = payback_line(extra["payback"])
    write_report(out, summary, runs=runs, extra=extra, title=title)
    append_sections(out / "report.md", extra)
    return {"summary": summary, **extra}
