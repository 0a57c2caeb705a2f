"""The base generator on disk: `BASE/generator.safetensors` (weights), `BASE/config.json` (the
resolved preset), `BASE/metrics.json` (pre-training summary). Complete when metrics.json exists
(written last)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from weightgen.config import Preset
from weightgen.errors import WeightgenError
from weightgen.gan.models import E2GAN_ARCH, E2GANGenerator


class BaseNotFoundError(WeightgenError):
    pass


def save_base(
    path: str | Path, state: dict[str, torch.Tensor], preset: Preset, metrics: dict
) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").unlink(missing_ok=True)
    tmp = path / ".generator.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path / "generator.safetensors")
    preset.save(path / "config.json")
    tmp = path / ".metrics.json.tmp"
    tmp.write_text(json.dumps({**metrics, "arch": E2GAN_ARCH}, indent=2) + "\n")
    tmp.replace(path / "metrics.json")


def is_complete(path: str | Path) -> bool:
    return (Path(path) / "metrics.json").is_file()


def load_base(path: str | Path) -> tuple[dict[str, torch.Tensor], Preset]:
    """(state dict, preset) of a complete base folder; BaseNotFoundError with the fix otherwise."""
    path = Path(path)
    if not is_complete(path):
        raise BaseNotFoundError(
            f"no complete base generator at {path}; run `weightgen base --out RUN` "
            f"(it writes RUN/base) or pass --base with such a folder"
        )
    arch = json.loads((path / "metrics.json").read_text()).get("arch")
    if arch != E2GAN_ARCH:
        raise BaseNotFoundError(
            f"the base at {path} was trained for another generator architecture "
            f"({arch or 'linear residual output, before e2gan-tanh'}; this version builds "
            f"{E2GAN_ARCH}): retrain it with `weightgen base --force` and re-collect"
        )
    preset = Preset.load(path / "config.json")
    state = load_file(str(path / "generator.safetensors"))
    # fail here, with the file named, rather than deep inside a worker
    try:
        E2GANGenerator(preset.gan).load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise BaseNotFoundError(
            f"{path}/generator.safetensors does not fit its config.json: {first}"
        ) from None
    return state, preset


def build_base(
    preset: Preset, out: str | Path, *, steps: int | None = None, progress: bool = True
) -> dict:
    """Pre-train the base on the recipe's base concepts (`Splits.base`: training concepts only,
    none of a novel family) and save it to `out` (a base folder). Returns metrics."""
    import time

    from tqdm.auto import tqdm

    from weightgen.concepts import EVAL_SEED_OFFSET, Splits, make_pairs
    from weightgen.gan.train import evaluate, pretrain_base
    from weightgen.text import get_encoder

    concepts = list(Splits.of(preset).base)
    encoder = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    text = encoder.encode([c.text for c in concepts])
    size = preset.gan.image_size
    n = preset.base.pairs_per_concept
    pairs = [make_pairs(c, n, size=size, seed=k, split="collect") for k, c in enumerate(concepts)]
    steps = preset.base.steps if steps is None else steps
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="base", unit="step", disable=not progress) as bar:

        def tick(step, loss):
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(l1=f"{loss:.4f}")

        state, losses = pretrain_base(
            gan_cfg=preset.gan,
            cfg=preset.base,
            tokens=text.tokens,
            masks=text.mask,
            pairs=pairs,
            steps=steps,
            progress=tick,
        )
    seconds = time.perf_counter() - t0
    g = E2GANGenerator(preset.gan)
    g.load_state_dict(state)
    per_concept = {}
    for k, c in enumerate(concepts):
        ex, ey = make_pairs(c, 16, size=size, seed=k + EVAL_SEED_OFFSET, split="collect")
        psnr, ssim = evaluate(g, ex, ey, text.tokens[k : k + 1], text.mask[k : k + 1])
        per_concept[c.id] = {"psnr": psnr, "ssim": ssim}
    metrics = {
        "steps": steps,
        "seconds": seconds,
        "l1_first": float(sum(losses[:20]) / max(len(losses[:20]), 1)),
        "l1_last": float(sum(losses[-20:]) / max(len(losses[-20:]), 1)),
        "concepts": [c.id for c in concepts],
        "eval": per_concept,
    }
    save_base(out, state, preset, metrics)
    return metrics
