"""`weightgen demo`: the whole pipeline on one machine, each stage reused when already complete.

RUN/base/       pre-trained base GAN                        (complete: metrics.json)
RUN/dataset/    collected LoRA weight blocks                (complete: manifest.json)
RUN/generator/  block diffusion transformer, EMA export     (complete: generator.json)
RUN/report/     report.json, report.md, curves.png, step0.png, speedup.png, grid.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

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
        from weightgen.data.sensitivity import SENSITIVITY_FILE
        from weightgen.gan.sensitivity import dataset_sensitivity

        if not (dataset / SENSITIVITY_FILE).is_file():
            # the x0 loss weighs each value by how much it moves the image (TrainConfig)
            t0 = time.perf_counter()
            dataset_sensitivity(str(base), str(dataset))
            timings["sensitivity_s"] = time.perf_counter() - t0
        # one intra-op thread on CPU: on 2 shared cores more threads fight (measured ~10x slower)
        # the image loss (base + one-step LoRA against each concept's edit) from step 0: measured
        # on runs/v3 at 600 steps, held-out step-0 PSNR mean / median 16.99 / 17.33 dB without it,
        # 18.09 / 17.64 with it (at 1.55x the training time)
        cfg = train_config(
            "tiny",
            max_steps=train_steps,
            threads=None if torch.cuda.is_available() else 1,
            loss_weight="sensitivity",
            image_loss=5.0,
            base=str(Path(base).resolve()),  # recorded in the config: valid from any folder
        )
        resume = (gen_dir / "checkpoints").is_dir()
        t0 = time.perf_counter()
        summary = train_generator(str(dataset), gen_dir, cfg, resume=resume)
        timings["generator_s"] = time.perf_counter() - t0
        print(
            f"  loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} in {summary['seconds']:.0f} s"
        )

    _stage(4, 4, "evaluate: sample every held-out concept, fine-tune some, write the report")
    from weightgen.eval.benchmark import BenchConfig, run_benchmark

    t0 = time.perf_counter()
    # the demo's short version of `weightgen evaluate`: no learning-rate sweep (every method at the
    # preset's rate), one concept of each of the first families; the full benchmark is
    # `weightgen evaluate --generator RUN/generator --out DIR`
    cfg = BenchConfig(
        per_family=1,
        concepts=finetune_concepts,
        sweep_concepts=0,
        lora_steps=200,
        scratch_max_steps=1000,
    )
    result = run_benchmark(run, run / "report", cfg, title="weightgen demo (tiny preset)")
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    (run / "report" / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return result
