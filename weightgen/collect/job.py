"""One collection job as a pure function, and the vetting of its result.

A job is (concept, seed). `run_job` builds the concept's pairs from collection photos, fine-tunes
a LoRA on the frozen base with `train_concept`, and returns the LoRA as numpy arrays plus metrics.
`vet` decides whether a result may enter the dataset (finite, bounded, quality floor). The Ray
fan-out that calls these lives in `weightgen/collect/driver.py`.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from weightgen.concepts import EVAL_SEED_OFFSET, get_concept, make_pairs
from weightgen.config import CollectConfig, Preset
from weightgen.gan import build_concept_model, lora_state_dict, train_concept


@dataclass(frozen=True)
class Job:
    concept_id: str
    seed: int

    @property
    def key(self) -> str:
        """webdataset __key__: concept id + seed (no '.')."""
        return f"{self.concept_id}-s{self.seed}"

    def content_id(self, preset: Preset) -> str:
        """Hash of everything that determines the result: re-running it is redundant work."""
        h = hashlib.sha256(
            repr((self.concept_id, self.seed, preset.gan, preset.lora, preset.concept)).encode()
        )
        return h.hexdigest()[:16]


def plan_jobs(concept_ids: list[str], seeds_per_concept: int = 1) -> list[Job]:
    return [Job(c, s) for c in concept_ids for s in range(seeds_per_concept)]


def lora_template(preset: Preset) -> dict[str, torch.Tensor]:
    """A fresh LoRA state dict of the preset (names and shapes; values are the shared init)."""
    from weightgen.gan import E2GANGenerator

    base_state = E2GANGenerator(preset.gan).state_dict()
    return lora_state_dict(build_concept_model("lora", preset.gan, preset.lora, base_state))


def run_job(
    job: Job,
    *,
    preset: Preset,
    base_state: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    device: str = "cpu",
    pairs: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Train one job. Returns {"key", "concept_id", "seed", "lora": {name: np.float32 array},
    "metrics": {...}}. Pure: the same inputs give the same LoRA on CPU.

    `pairs(n, size=, seed=, split=)` makes (inputs, targets); default: the catalogue concept's
    `make_pairs`. Any other pair source (a folder, a diffusers editor) plugs in here."""
    if pairs is None:
        pairs = functools.partial(make_pairs, get_concept(job.concept_id))
    cfg = preset.concept
    size = preset.gan.image_size
    train_pairs = pairs(cfg.n_train_pairs, size=size, seed=job.seed, split="collect")
    eval_pairs = pairs(
        cfg.n_eval_pairs, size=size, seed=job.seed + EVAL_SEED_OFFSET, split="collect"
    )
    result = train_concept(
        method="lora",
        gan_cfg=preset.gan,
        lora_cfg=preset.lora,
        cfg=cfg,
        base_state=base_state,
        tokens=tokens,
        mask=mask,
        train_pairs=train_pairs,
        eval_pairs=eval_pairs,
        seed=job.seed,
        device=device,
    )
    return {
        "key": job.key,
        "concept_id": job.concept_id,
        "seed": job.seed,
        "lora": {k: v.numpy() for k, v in result.lora.items()},
        "metrics": result.metrics(),
    }


def vet(result: dict, cfg: CollectConfig) -> str | None:
    """None when the result may enter the dataset, else the reason it may not (one line)."""
    worst = 0.0
    for name, arr in result["lora"].items():
        if not np.isfinite(arr).all():
            return f"non-finite values in {name}"
        worst = max(worst, float(np.abs(arr).max(initial=0.0)))
    if worst > cfg.max_abs_weight:
        return f"weight magnitude {worst:.3g} above the bound {cfg.max_abs_weight}"
    m = result["metrics"]
    if not math.isfinite(m["psnr_final"]):
        return "non-finite PSNR"
    if m["psnr_final"] < cfg.min_psnr:
        return f"final PSNR {m['psnr_final']:.2f} dB below the floor {cfg.min_psnr} dB"
    if m["psnr_final"] < m["psnr_step0"] - cfg.max_psnr_drop:
        return f"PSNR fell from {m['psnr_step0']:.2f} to {m['psnr_final']:.2f} dB"
    return None
