"""`weightgen benchmark` (and `weightgen demo`, its short recipe): the whole pipeline on one
machine, each stage reused when already complete, so an interrupted run resumes where it stopped.

RUN/base/       pre-trained base GAN                        (complete: metrics.json)
RUN/dataset/    collected LoRA weight blocks                (complete: manifest.json; a rerun
                collects only the jobs its ledger lacks)
RUN/generator/  block diffusion transformer, EMA export     (complete: generator.json; a rerun
                resumes from its last checkpoint)
REPORT/         report.json, report.md, curves.png, step0.png, speedup.png, grid.png, timings.json
                (the sweep and each fine-tuned concept are saved as they finish: a rerun resumes)

The training-side stages are shared by both splits: the recipe's novel families never reach them,
so `--split heldout` and `--split novel` evaluate one trained chain.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from weightgen.config import Preset


def _stage(i: int, n: int, msg: str) -> None:
    print(f"[{i}/{n}] {msg}", flush=True)


# TrainConfig fields that change how a generator is trained, not what it learns
OPERATIONAL = frozenset(
    {"base", "threads", "num_workers", "log_every", "ckpt_every", "keep_last", "stream",
     "shuffle_buffer", "gradient_checkpointing"}
)  # fmt: skip


def check_same_recipe(gen_dir: Path, cfg) -> None:
    """A finished generator is reused only when it was trained with the recipe's [generator]
    settings (OPERATIONAL ones aside); otherwise one line naming the fields that differ."""
    from weightgen.config import TrainConfig
    from weightgen.errors import WeightgenError

    meta = json.loads((gen_dir / "generator.json").read_text())
    if "train_config" not in meta:
        return  # a generator from before configs were saved with it: nothing to compare
    # missing keys take their defaults (a generator trained before a field existed had it off)
    theirs = json.loads(json.dumps(TrainConfig.from_dict(meta["train_config"]).to_dict()))
    ours = json.loads(json.dumps(cfg.to_dict()))
    differ = sorted(k for k in ours if k not in OPERATIONAL and theirs.get(k) != ours[k])
    if differ:
        shown = ", ".join(f"{k} {theirs.get(k)!r} (recipe: {ours[k]!r})" for k in differ[:4])
        raise WeightgenError(
            f"{gen_dir} was trained with another [generator] recipe: {shown}"
            f"{' ...' if len(differ) > 4 else ''}; give a new --out or remove {gen_dir}"
        )


def run_pipeline(
    out: str | Path,
    preset: Preset,
    *,
    workers: int | None = None,
    report: str | Path | None = None,
    title: str | None = None,
) -> dict:
    """Every stage of `preset` into the run folder `out`, the benchmark of its `bench.split` into
    `report` (default RUN/report); `workers`: local Ray CPUs for collection (default: all cores)."""
    from weightgen.collect import collect
    from weightgen.data import read_manifest
    from weightgen.gan import build_base, is_complete
    from weightgen.train import train_generator

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
        n = preset.collect.limit or "every"
        _stage(2, 4, f"dataset: collecting {n} training concepts through Ray")
        s = collect(out=str(dataset), base=base, num_workers=workers, collect_cfg=preset.collect)
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
        check_same_recipe(gen_dir, preset.generator)
        _stage(3, 4, f"generator: reusing {gen_dir}")
    else:
        _stage(3, 4, "generator: training the block diffusion transformer (DeepSpeed, one process)")
        from weightgen.data.sensitivity import SENSITIVITY_FILE
        from weightgen.gan.sensitivity import dataset_sensitivity

        if (
            preset.generator.loss_weight == "sensitivity"
            and not (dataset / SENSITIVITY_FILE).is_file()
        ):
            # the x0 loss weighs each value by how much it moves the image (TrainConfig)
            t0 = time.perf_counter()
            dataset_sensitivity(str(base), str(dataset))
            timings["sensitivity_s"] = time.perf_counter() - t0
        cfg = dataclasses.replace(preset.generator, base=str(Path(base).resolve()))
        resume = (gen_dir / "checkpoints").is_dir()
        t0 = time.perf_counter()
        summary = train_generator(str(dataset), gen_dir, cfg, resume=resume)
        timings["generator_s"] = time.perf_counter() - t0
        print(
            f"  loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} in {summary['seconds']:.0f} s"
        )

    split = preset.bench.split
    _stage(4, 4, f"evaluate: every {split} concept at step 0, fine-tunes, the report")
    from weightgen.eval.benchmark import run_benchmark

    t0 = time.perf_counter()
    report = Path(report) if report is not None else run / "report"
    title = title or f"weightgen benchmark, {split} split ({preset.name} config)"
    result = run_benchmark(run, report, preset.bench, title=title)
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    # this invocation's stages (a reused stage has no entry: see its own folder's log)
    (report / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return result
