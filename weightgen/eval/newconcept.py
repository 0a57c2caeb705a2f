"""New-concept evaluation: initialisations for a concept the generator never saw, their quality at
step 0, and short fine-tunes from each, all on the same images, seeds and evaluation schedule.

Methods (DESIGN.md report contract):
  base       the base generator alone (no LoRA, no training)
  scratch    pix2pix U-Net from random initialisation (trained)
  lora-zero  base + LoRA with B = 0, the E2GAN recipe (trained)
  generated  base + LoRA sampled from the generator in one step (trained)
  nearest    base + the training LoRA whose concept text is most similar (trained)
  knn-blend, best-by-loss, nearest-noise, random-text: retrieval baselines and a control
             (weightgen.eval.inits)
  refined    base + the nearest LoRA refined by one denoising step of the generator (trained)
  blended    base + alpha * generated + (1 - alpha) * nearest, value for value (trained)
  picked     base + the start with the lowest loss on the concept's training pairs among
             generated, nearest, their blends and generated's enlarged update (trained)
  mean       base + the mean training LoRA (trained)
Training pairs come from collection photos, evaluation pairs from evaluation photos only.
"""

from __future__ import annotations

import time

from weightgen.concepts import Concept, make_pairs
from weightgen.config import Preset
from weightgen.gan import train_concept

# every method `finetune` accepts (config.BenchConfig.available_methods: the benchmark's)
FINETUNE_METHODS = (
    "scratch",
    "lora-zero",
    "generated",
    "nearest",
    "mean",
    "knn-blend",
    "best-by-loss",
    "nearest-noise",
    "random-text",
    "refined",
    "blended",
    "picked",
)
EVAL_SEED = 0
TRAIN_SEED = 0


def eval_pairs(concept: Concept, preset: Preset, n: int | None = None):
    n = preset.concept.n_eval_pairs if n is None else n
    return make_pairs(concept, n, size=preset.gan.image_size, seed=EVAL_SEED, split="eval")


def train_pairs(concept: Concept, preset: Preset):
    """The concept's training pairs: the same images for every method."""
    return make_pairs(
        concept,
        preset.concept.n_train_pairs,
        size=preset.gan.image_size,
        seed=TRAIN_SEED,
        split="collect",
    )


def finetune(
    method: str,
    *,
    preset: Preset,
    base_state,
    concept: Concept,
    tokens,
    mask,
    init_lora: dict | None = None,
    steps: int | None = None,
    lr: float | None = None,
    pairs=None,
    train=None,
    cfg=None,
    seed: int = TRAIN_SEED,
    **schedule,
):
    """One method's fine-tune of one concept (same images, seed and schedule for every method).
    `pairs` / `train`: evaluation / training pairs (default: the concept's); `cfg`: a
    ConceptTrainConfig (default: the preset's); `schedule`: train_concept's eval_at, stop, preview."""
    if method not in FINETUNE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {FINETUNE_METHODS}")
    return train_concept(
        method="scratch" if method == "scratch" else "lora",
        gan_cfg=preset.gan,
        lora_cfg=preset.lora,
        cfg=preset.concept if cfg is None else cfg,
        base_state=base_state,
        tokens=tokens,
        mask=mask,
        train_pairs=train if train is not None else train_pairs(concept, preset),
        eval_pairs=pairs if pairs is not None else eval_pairs(concept, preset),
        init_lora=init_lora,
        seed=seed,
        steps=steps,
        lr=lr,
        **schedule,
    )


def timed_generate(bundle, texts: list[str], **kw) -> tuple[list[dict], float]:
    from weightgen.diffusion import generate_lora

    t0 = time.perf_counter()
    out = generate_lora(bundle, texts, **kw)
    return out, time.perf_counter() - t0
