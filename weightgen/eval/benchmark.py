"""The held-out benchmark (`weightgen evaluate`): its run (`run_benchmark`: step 0, the sweep, the
fine-tunes, the report and ablation rows) and `render_report`. The protocol and what each step
measures: weightgen.eval.protocol; the report contract: docs/design.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from weightgen.config import BLENDED, REFINED, BenchConfig
from weightgen.errors import WeightgenError
from weightgen.eval.ablations import (
    SAMPLING,
    ablation_generator,
    blend_weight,
    refine_strength,
    step0_row,
)
from weightgen.eval.context import BenchContext, find_nearest, step0_table
from weightgen.eval.cost import cost_line, one_off_cost, payback, payback_line
from weightgen.eval.finetunes import concept_runs
from weightgen.eval.protocol import select_concepts
from weightgen.eval.report import append_sections
from weightgen.eval.sweep import sweep_learning_rates
from weightgen.pool import run_tasks


def run_benchmark(
    run: str | Path,
    out: str | Path,
    cfg: BenchConfig | None = None,
    *,
    generator: str | Path | None = None,
    ablations: Sequence[str] = (),
    title: str = "weightgen held-out benchmark (tiny preset)",
) -> dict:
    from weightgen.concepts import concepts as list_concepts
    from weightgen.eval.report import save_image_grid, summarise, write_report
    from weightgen.initial import blend_loras

    cfg = cfg or BenchConfig()
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    ctx = BenchContext(run, Path(generator) if generator else None, cfg.empty_text)
    preset = ctx.preset
    held = list_concepts("heldout")[: cfg.step0_concepts]

    # 1. step 0 on every held-out concept
    gen, per_text_s = ctx.generate([c.text for c in held], cfg.sample_steps)
    t0 = time.perf_counter()
    ctx.generate([held[0].text + " "], cfg.sample_steps)  # one uncached concept alone
    one_s = time.perf_counter() - t0
    tb = ctx.enc.encode([c.text for c in held])
    nearest_of = find_nearest(ctx, held, tb)
    extra_step0, offsets = {}, {"generated": per_text_s}
    if cfg.refine_strength is not None:
        init = [nearest_of[c.id]["lora"] for c in held]
        refined, offsets[REFINED] = ctx.generate(
            [c.text for c in held], cfg.sample_steps, init, cfg.refine_strength
        )
        extra_step0[REFINED] = refined
    if cfg.blend is not None:
        # retrieval is a dot product over the training texts: the blend costs what sampling does
        extra_step0[BLENDED] = [
            blend_loras(gen[i], nearest_of[c.id]["lora"], cfg.blend) for i, c in enumerate(held)
        ]
        offsets[BLENDED] = per_text_s
    step0 = step0_table(ctx, held, gen, tb, nearest_of, extra_step0)

    # 2. learning rates from training concepts
    if cfg.finetune:
        sweep = sweep_learning_rates(ctx, cfg, out)
    else:
        sweep = {"best": {}, "table": {}}
    methods = cfg.methods
    lrs = {m: cfg.lrs.get(m, sweep["best"].get(m, preset.concept.lr)) for m in methods}

    # 3. fine-tunes
    chosen = select_concepts("heldout", cfg.per_family, cfg.skip_per_family) if cfg.finetune else []
    chosen = [c for c in chosen if c in held][: cfg.concepts]
    jobs = []
    for c in chosen:
        i = held.index(c)
        jobs.append(
            dict(
                preset=preset,
                base_state=ctx.base_state,
                concept_id=c.id,
                tokens=tb.tokens[i],
                mask=tb.mask[i],
                inits={
                    "scratch": None,
                    "lora-zero": None,
                    "generated": gen[i],
                    "nearest": nearest_of[c.id]["lora"],
                    "mean": ctx.baselines.mean_lora,
                    **{m: v[i] for m, v in extra_step0.items()},
                },
                lrs=lrs,
                cfg=cfg,
                offsets=offsets,
            )
        )
    results = run_tasks(concept_runs, jobs, workers=cfg.workers, desc="fine-tune") if jobs else []
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
    # the opt-in methods (refined, blended): their step-0 wins and how the headline names them
    extra_wins = {k: win_rate(k, ("generated", "mean", "nearest")) for k in extra_step0}

    def extra_label(k: str) -> str:
        if k == REFINED:
            return f"refined (nearest LoRA, one step from strength {cfg.refine_strength:g})"
        return f"blended ({cfg.blend:g} generated + {1 - cfg.blend:g} nearest)"

    def shares(w: dict[str, float]) -> str:
        return ", ".join(f"{k} {100 * v:.0f}%" for k, v in w.items())

    cost = one_off_cost(run, ctx.bundle.meta, Path(generator) if generator else run / "generator")
    saved = payback(m, cost)
    extra = {
        "config": cfg.to_dict(),
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
            "held-out concepts": f"{len(held)} at step 0, {len(chosen)} fine-tuned "
            f"({cfg.per_family} per family"
            + (f" after the first {cfg.skip_per_family}" if cfg.skip_per_family else "")
            + ")",
            "generated PSNR at step 0 (median)": f"{m['generated']['psnr_step0']:.2f} dB vs base "
            f"{m['base']['psnr_step0']:.2f}, mean {m['mean']['psnr_step0']:.2f}, nearest "
            f"{m['nearest']['psnr_step0']:.2f}",
            "generated beats at step 0 (share of concepts)": shares(wins),
            **{
                f"{extra_label(k)} at step 0": f"median {m[k]['psnr_step0']:.2f} dB; beats "
                + shares(w)
                for k, w in extra_wins.items()
            },
            "learning rates (sweep on training concepts)": ", ".join(
                f"{k} {v:g}" for k, v in lrs.items()
            ),
            "one-off cost": cost_line(cost),
            "paid back after (new concepts)": payback_line(saved),
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
    extra["headline"]["paid back after (new concepts)"] = payback_line(extra["payback"])
    write_report(out, summary, runs=runs, extra=extra, title=title)
    append_sections(out / "report.md", extra)
    return {"summary": summary, **extra}
