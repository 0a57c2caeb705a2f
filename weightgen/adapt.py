"""A user's own concept: a folder of before/after pairs and a sentence in, a trained LoRA out
(`weightgen new-concept`).

The folder is pix2pix's layout (weightgen.concepts.sources.FolderPairs: A/ and B/ with matching
names, or side-by-side AB images). Every 5th file (sorted) is held back: the quality curve is
measured on crops of those, training uses crops of the rest. The model folder is a run (RUN/base,
RUN/generator, RUN/dataset) or a shipped model with the same layout (models/tiny: no dataset, so
no retrieval).

OUT/ (staged in a hidden sibling folder and moved in place at the end: nothing is written half)
  lora.safetensors     the trained LoRA (weightgen's flat format, text in the metadata)
  adapter/             the same as a PEFT adapter (weightgen.adapter)
  curve.json           quality (PSNR, SSIM on the held-back pairs) over steps and seconds, per run
  curve.png            the same, drawn
  preview.png          held-back inputs, targets, the initial and the trained LoRA's outputs
  summary.json         steps, seconds, quality at step 0 and at the end; with --init picked the
                       candidates' losses and the one chosen; with --compare the
                       speed-up over LoRA-from-zero to its final quality
  resolved-config.json the recipe used
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from weightgen.errors import WeightgenError

INITS = ("generated", "nearest", "blended", "picked", "zero")
MIN_PAIRS = 5  # 4 to train on, 1 held back (every 5th file)
N_PAIRS = 8  # pairs a pair-conditioned generator reads per concept, as it was trained
MAX_STEPS = 1000  # the cap of a run that trains until its plateau
PATIENCE = 100  # plateau: no gain of MIN_GAIN dB within this many steps
MIN_GAIN = 0.2


class NewConceptError(WeightgenError):
    """Unusable input to new-concept (one line)."""


@dataclass
class ModelDir:
    """A run or shipped model: base/, and generator/ and dataset/ when present."""

    root: Path
    base: Path
    generator: Path | None
    dataset: Path | None

    @classmethod
    def find(cls, path: str | os.PathLike) -> ModelDir:
        root = Path(path).expanduser()
        base = root / "base"
        if not (base / "generator.safetensors").is_file():
            raise NewConceptError(
                f"no model at {root}: expected {base}/generator.safetensors (a run folder from "
                "`weightgen demo` / `weightgen benchmark`, or models/tiny)"
            )
        gen = root / "generator"
        data = root / "dataset"
        return cls(
            root,
            base,
            gen if (gen / "generator.json").is_file() else None,
            data if (data / "manifest.json").is_file() else None,
        )


def default_model() -> Path:
    """models/tiny when it is there, else runs/demo (what `make run` trains)."""
    for p in (Path("models/tiny"), Path("runs/demo")):
        if (p / "base" / "generator.safetensors").is_file():
            return p
    raise NewConceptError(
        "no model: give --model DIR (a run folder with base/ and generator/), or run `make run`"
    )


def check_pairs(source) -> None:
    """Enough pairs, every file an image, A and B of a pair the same size (one line each)."""
    from PIL import Image, UnidentifiedImageError

    n = len(source.names)
    if n < MIN_PAIRS:
        raise NewConceptError(
            f"pair folder {source.root}: {n} pair(s); new-concept needs at least {MIN_PAIRS} "
            f"(every {MIN_PAIRS}th is held back to measure quality)"
        )
    for name in source.names:
        files = (
            [source.root / "A" / name, source.root / "B" / name]
            if source.layout == "ab"
            else [source.images_dir / name]
        )
        sizes = []
        for f in files:
            try:
                with Image.open(f) as im:
                    im.verify()
                with Image.open(f) as im:
                    sizes.append(im.size)
            except (UnidentifiedImageError, OSError, SyntaxError):
                raise NewConceptError(f"{f} is not an image PIL can read") from None
        if len(sizes) == 2 and sizes[0] != sizes[1]:
            raise NewConceptError(
                f"pair {name}: A/ is {sizes[0][0]}x{sizes[0][1]} but B/ is "
                f"{sizes[1][0]}x{sizes[1][1]}; the two halves of a pair must be aligned at one size"
            )


def _plateau(curve) -> bool:
    from weightgen.eval.metrics import plateaued

    return plateaued([vars(p) for p in curve], patience_steps=PATIENCE, min_gain=MIN_GAIN)


def new_concept(
    pairs: str | os.PathLike,
    text: str,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    init: str = "generated",
    steps: int | None = None,
    compare: bool = False,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
) -> dict:
    """Train a LoRA for the concept of `pairs` + `text` from `init`; returns the summary."""
    from weightgen.concepts.sources import open_pair_folder
    from weightgen.config import only_sections, override, save_resolved
    from weightgen.gan import load_base
    from weightgen.paths import check_dir_writable

    only_sections(overrides, ("concept", "sample"), "new-concept")
    if init not in INITS:
        raise NewConceptError(f"unknown --init {init!r}; choose one of: {', '.join(INITS)}")
    if steps is not None and steps < 1:
        raise NewConceptError(f"--steps must be >= 1, got {steps}")
    source = open_pair_folder(pairs, text)
    check_pairs(source)
    md = ModelDir.find(model if model is not None else default_model())
    if init in ("generated", "blended", "picked") and md.generator is None:
        raise NewConceptError(f"--init {init} needs a trained generator: none in {md.root}")
    if init in ("nearest", "blended") and md.dataset is None:
        raise NewConceptError(
            f"--init {init} needs the training LoRAs (retrieval): no dataset/ in {md.root}"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NewConceptError(f"--out {out} is a file; give a folder")
    check_dir_writable(out.parent)  # the result is staged beside it, then moved in
    base_state, preset = load_base(md.base)
    preset = override(preset, overrides)

    stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        summary = _train(source, text, md, base_state, preset, init, steps, compare, stage)
        save_resolved(preset, stage, source=str(md.base), overrides=list(overrides))
        out.mkdir(parents=True, exist_ok=True)
        for item in stage.iterdir():  # move in place: the folder holds the whole result
            dst = out / item.name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(item, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _train(source, text, md, base_state, preset, init, steps, compare, out: Path) -> dict:
    from safetensors.torch import save_file

    from weightgen.adapter import save_adapter
    from weightgen.eval.metrics import eval_schedule, plateau_quality, time_to_target
    from weightgen.eval.newconcept import finetune
    from weightgen.text import get_encoder

    size = preset.gan.image_size
    train = source.pairs(preset.concept.n_train_pairs, size, seed=0, split="collect")
    held = source.pairs(preset.concept.n_eval_pairs, size, seed=0, split="eval")
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    tb = enc.encode([text])

    t0 = time.perf_counter()
    init_lora, picked = _initial(init, text, md, preset, enc, tb, train, base_state)
    init_s = time.perf_counter() - t0

    budget = steps or MAX_STEPS
    stop = None if steps else _plateau
    runs = {}
    methods = [init] + (["zero"] if compare and init != "zero" else [])
    results = {}
    for m in methods:
        r = finetune(
            "lora-zero" if m == "zero" else "generated",
            preset=preset,
            base_state=base_state,
            concept=source,
            tokens=tb.tokens[0],
            mask=tb.mask[0],
            init_lora=None if m == "zero" else init_lora,
            steps=budget,
            pairs=held,
            train=train,
            eval_at=eval_schedule(budget),
            stop=stop,
            preview=held[0][:4],
        )
        results[m] = r
        runs[m] = {
            "curve": [vars(p) for p in r.curve],
            "offset_s": 0.0 if m == "zero" else init_s,
            "steps": r.steps,
        }
    main = results[init]
    summary = {
        "concept": {"text": text, "pairs": str(source.root), "files": len(source.names)},
        "init": init,
        "model": str(md.root),
        "init_seconds": init_s,
        **({"picked": picked} if picked else {}),
        "steps": main.steps,
        "train_seconds": main.train_seconds,
        "psnr_step0": main.psnr_step0,
        "psnr_final": main.psnr_final,
        "ssim_step0": main.ssim_step0,
        "ssim_final": main.ssim_final,
        # the base alone: B = 0 is the base's own output (lora-zero's step 0)
        "psnr_base": results["zero"].psnr_step0 if "zero" in results else None,
    }
    if "zero" in results and init != "zero":
        z = runs["zero"]["curve"]
        target = plateau_quality(z)
        t_init, s_init = time_to_target(runs[init]["curve"], target, offset_s=init_s)
        t_zero, s_zero = time_to_target(z, target)
        same = min(len(z), len(runs[init]["curve"])) - 1  # the same measurement index
        summary["compare"] = {
            "target_psnr": target,
            "target": "LoRA-from-zero's final quality on the held-back pairs",
            "time_to_target_s": {init: t_init, "zero": t_zero},
            "steps_to_target": {init: s_init, "zero": s_zero},
            "speedup": (t_zero / max(t_init, 1e-9)) if t_init and t_zero else None,
            "at_same_step": {
                "step": z[same]["step"],
                init: runs[init]["curve"][same]["psnr"],
                "zero": z[same]["psnr"],
            },
        }
    lora = main.lora
    meta = {"text": text, "init": init, "model": str(md.root), "pairs": str(source.root)}
    save_file({k: v.contiguous() for k, v in lora.items()}, str(out / "lora.safetensors"), meta)
    save_adapter(lora, out / "adapter", preset.lora, meta)
    (out / "curve.json").write_text(json.dumps(runs, indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(out / "curve.png", runs, text)
    _preview(out / "preview.png", held, main)
    return summary


def _initial(init: str, text: str, md: ModelDir, preset, enc, tb, train, base_state):
    """(the initial LoRA of `init` (None: LoRA from zero), for `picked` {"chosen", "l1": {candidate:
    loss}}); a generator trained with pair features also reads the training pairs `train` ((x, y),
    as fine-tuning uses them), and `picked` scores its candidates on those same pairs. `tb`: the
    text's TextBatch from `enc`."""
    if init == "zero":
        return None, None
    from weightgen.initial import WeightBaselines, initial_loras

    bundle = baselines = None
    if init in ("generated", "blended", "picked"):
        from weightgen.diffusion import load_generator

        bundle = load_generator(md.generator)
    if init in ("nearest", "blended") or (init == "picked" and md.dataset is not None):
        baselines = WeightBaselines.from_dataset(str(md.dataset))
    pairs = tuple(t[:N_PAIRS] for t in train)
    first = "generated" if init == "picked" else init
    (lora,), _ = initial_loras(
        first, [text], sample=preset.sample, bundle=bundle, baselines=baselines, encoder=enc,
        pairs=[pairs],
    )  # fmt: skip
    if init != "picked":
        return lora, None
    from weightgen.gan import build_concept_model
    from weightgen.initial import PairScorer, pick_by_pairs, pick_candidates

    near = baselines.nearest(tb.pooled[0])[0] if baselines is not None else None
    model = build_concept_model("lora", preset.gan, preset.lora, base_state)
    score = PairScorer(model, *pairs, tb.tokens[:1], tb.mask[:1])
    chosen, lora, losses = pick_by_pairs(pick_candidates(lora, near), score)
    return lora, {"chosen": chosen, "l1": losses}


def _plot(path: Path, runs: dict, text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for m, r in runs.items():
        c = r["curve"]
        ax.plot([p["step"] for p in c], [p["psnr"] for p in c], marker="o", ms=2.5, label=m)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR on held-back pairs (dB)")
    ax.set_title(text[:70], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _preview(path: Path, held, result) -> None:
    from weightgen.eval.report import save_image_grid

    p = result.extra.get("preview") or {}
    x, y = held[0], held[1]
    rows = []
    for i in range(min(4, x.shape[0])):
        imgs = [x[i], y[i]]
        if "start" in p and "end" in p:
            imgs += [p["start"][i], p["end"][i]]
        rows.append((f"held-back {i + 1}", imgs))
    cols = ["input", "target"] + (["initial LoRA", "trained LoRA"] if len(rows[0][1]) > 2 else [])
    save_image_grid(path, rows, cols)


def describe(s: dict) -> str:
    """One line for a new_concept summary: quality from step 0 to the end, and the comparison."""
    line = (
        f"{s['concept']['files']} pairs from {s['init']}: PSNR on held-back pairs "
        f"{s['psnr_step0']:.2f} -> {s['psnr_final']:.2f} dB in {s['steps']} steps / "
        f"{s['train_seconds']:.1f} s"
    )
    c = s.get("compare")
    if c:
        same = c["at_same_step"]
        line += f"; LoRA from zero at step {same['step']}: {same['zero']:.2f} dB" + (
            f", {c['speedup']:.1f}x faster to its final quality" if c["speedup"] else ""
        )
    return line
