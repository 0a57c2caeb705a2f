"""`weightgen demo`: the whole pipeline on one machine, each stage reused when already complete.

RUN/base/       pre-trained base GAN                        (complete: metrics.json)
RUN/dataset/    collected LoRA weight blocks                (complete: manifest.json)
RUN/generator/  block diffusion transformer, EMA export     (complete: generator.json)
RUN/report/     report.json, report.md, curves.png, step0.png, grid.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from weightgen.config import Preset


def _stage(i: int, n: int, msg: str) -> None:
    print(f"[{i}/{n}] {msg}", flush=True)


def run_demo(
    out: str | Path,
    preset: Preset,
    *,
    concepts: int = 120,
    workers: int | None = None,
    finetune_concepts: int = 6,
    train_steps: int | None = None,
) -> dict:
    from cluster.collect import collect
    from weightgen.data import read_manifest
    from weightgen.gan import build_base, is_complete
    from weightgen.train import train_config, train_generator

    run = Path(out)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    base = run / "base"
    if is_complete(base):
        _stage(1, 4, f"base: reusing {base}")
    else:
        _stage(1, 4, "base: pre-training the base generator on the base concepts")
        t0 = time.perf_counter()
        build_base(preset, base)
        timings["base_s"] = time.perf_counter() - t0

    dataset = run / "dataset"
    if (dataset / "manifest.json").is_file():
        _stage(
            2, 4, f"dataset: reusing {dataset} ({read_manifest(str(dataset)).num_samples} samples)"
        )
    else:
        _stage(2, 4, f"dataset: collecting {concepts} training concepts through Ray")
        s = collect(out=str(dataset), base=base, limit=concepts, num_workers=workers)
        timings["collect_s"] = s.seconds
        print(
            f"  collected {s.accepted}/{s.planned} ({len(s.rejected)} rejected) in {s.seconds:.0f} s, "
            f"{s.lora_params} LoRA values -> {s.num_blocks} blocks of {s.block_size}"
        )
        import ray

        if ray.is_initialized():
            ray.shutdown()  # free the workers' memory and cores for the next stages

    gen_dir = run / "generator"
    if (gen_dir / "generator.json").is_file():
        _stage(3, 4, f"generator: reusing {gen_dir}")
    else:
        _stage(3, 4, "generator: training the block diffusion transformer (DeepSpeed, one process)")
        # one intra-op thread on CPU: on 2 shared cores more threads fight (measured ~10x slower)
        cfg = train_config(
            "tiny", max_steps=train_steps, threads=None if torch.cuda.is_available() else 1
        )
        resume = (gen_dir / "checkpoints").is_dir()
        t0 = time.perf_counter()
        summary = train_generator(str(dataset), gen_dir, cfg, resume=resume)
        timings["generator_s"] = time.perf_counter() - t0
        print(
            f"  loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} in {summary['seconds']:.0f} s"
        )

    _stage(4, 4, "evaluate: sample every held-out concept, fine-tune some, write the report")
    t0 = time.perf_counter()
    result = evaluate_heldout(run, finetune_concepts=finetune_concepts)
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    (run / "report" / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return result


def evaluate_heldout(run: Path, *, finetune_concepts: int = 6, out: Path | None = None) -> dict:
    from weightgen.concepts import concepts as list_concepts
    from weightgen.diffusion import load_generator
    from weightgen.eval.newconcept import (
        WeightBaselines,
        eval_pairs,
        finetune,
        step0_quality,
        timed_generate,
    )
    from weightgen.eval.report import save_image_grid, summarise, write_report
    from weightgen.gan import build_concept_model, load_base
    from weightgen.gan.train import from_model, to_model
    from weightgen.text import get_encoder

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # every method's timing is measured under the same thread count
    out = out or run / "report"
    base_state, preset = load_base(run / "base")  # the preset the base and its LoRAs were made with
    bundle = load_generator(run / "generator")
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    held = list_concepts("heldout")
    texts = [c.text for c in held]

    # time from text to LoRA: one concept, then the whole batch (text encoding included)
    _, one_s = timed_generate(bundle, [texts[0] + " "], encoder=enc)  # uncached text
    gen, batch_s = timed_generate(bundle, texts, encoder=enc)
    tb = enc.encode(texts)
    baselines = WeightBaselines.from_dataset(str(run / "dataset"))

    step0, nearest_of = {}, {}
    for i, c in enumerate(tqdm(held, desc="step 0", unit="concept")):
        pairs = eval_pairs(c, preset)
        nl, nid, sim = baselines.nearest(tb.pooled[i])
        nearest_of[c.id] = (nl, nid, sim)
        row = {}
        for name, lora in (
            ("base", None),
            ("generated", gen[i]),
            ("nearest", nl),
            ("mean", baselines.mean_lora),
        ):
            p, s = step0_quality(preset, base_state, lora, c, tb.tokens[i], tb.mask[i], pairs)
            row[name] = {"psnr": p, "ssim": s}
        row["lora-zero"] = dict(row["base"])  # B = 0: the base's output exactly
        step0[c.id] = row

    # fine-tune the first K held-out concepts from each initialisation
    runs, grid_rows = {}, []
    chosen = held[:finetune_concepts]
    methods = ("scratch", "lora-zero", "generated", "nearest", "mean")
    bar = tqdm(total=len(chosen) * len(methods), desc="fine-tune", unit="run")
    per_text_s = batch_s / len(texts)
    for c in chosen:
        i = held.index(c)
        pairs = eval_pairs(c, preset)
        inits = {
            "scratch": None,
            "lora-zero": None,
            "generated": gen[i],
            "nearest": nearest_of[c.id][0],
            "mean": baselines.mean_lora,
        }
        runs[c.id] = {}
        results = {}
        for m in methods:
            r = finetune(
                m,
                preset=preset,
                base_state=base_state,
                concept=c,
                tokens=tb.tokens[i],
                mask=tb.mask[i],
                init_lora=inits[m],
                pairs=pairs,
            )
            results[m] = r
            runs[c.id][m] = {
                "curve": [vars(p) for p in r.curve],
                "offset_s": per_text_s if m == "generated" else 0.0,
            }
            bar.update(1)
        # image row: input | target | base only | generated at step 0 | generated after fine-tune
        x, y = pairs[0][:1], pairs[1][:1]
        t, msk = tb.tokens[i][None], tb.mask[i][None]
        with torch.no_grad():
            imgs = [x[0], y[0]]
            for lora in (None, gen[i], results["generated"].lora):
                g = build_concept_model(
                    "lora", preset.gan, preset.lora, base_state, init_lora=lora
                ).eval()
                imgs.append(from_model(g(to_model(x), t, msk))[0])
        grid_rows.append((c.id, imgs))
    bar.close()

    summary = summarise(step0, runs)
    out.mkdir(parents=True, exist_ok=True)
    if grid_rows:
        save_image_grid(
            out / "grid.png",
            grid_rows,
            ["input", "target", "base only", "generated, step 0", "generated, fine-tuned"],
        )
    m = summary["methods"]
    wins = {
        k: sum(step0[c]["generated"]["psnr"] > step0[c][k]["psnr"] for c in step0) / len(step0)
        for k in ("base", "lora-zero", "mean", "nearest")
    }
    extra = {
        "text_to_lora_s": {
            "one": one_s,
            "batch": batch_s,
            "batch_size": len(texts),
            "per_concept_in_batch": per_text_s,
        },
        "generated_step0_win_rate": wins,
        "nearest": {cid: {"concept": v[1], "similarity": v[2]} for cid, v in nearest_of.items()},
        "generator": bundle.meta,
        "runs": runs,  # every curve, so the report can be redrawn without retraining
        "headline": {
            "held-out concepts": len(held),
            "generated PSNR at step 0 (median)": f"{m['generated']['psnr_step0']:.2f} dB vs base {m['base']['psnr_step0']:.2f}, mean {m['mean']['psnr_step0']:.2f}, nearest {m['nearest']['psnr_step0']:.2f}",
            "generated beats at step 0 (share of concepts)": ", ".join(
                f"{k} {100 * v:.0f}%" for k, v in wins.items()
            ),
            "text -> LoRA": f"{one_s:.2f} s for one concept, {batch_s:.2f} s for {len(texts)}",
        },
    }
    write_report(out, summary, runs=runs, extra=extra, title="weightgen demo (tiny preset)")
    print(f"report: {out / 'report.md'}")
    for name, e in m.items():
        print(
            f"  {name:10s} step0 {e['psnr_step0']:.2f} dB  final {e['psnr_final'] if e['psnr_final'] is None else round(e['psnr_final'], 2)}"
            f"  time-to-target {e.get('time_to_target_s')}"
        )
    return {"summary": summary, **extra}
