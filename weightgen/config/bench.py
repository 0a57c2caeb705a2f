"""The benchmark's section of the config tree (`[bench]`): which held-out concepts, budgets, the
learning-rate sweep and the opt-in methods; the protocol itself is weightgen.eval.protocol's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from weightgen.errors import ConfigError

TRAINED = ("scratch", "lora-zero", "generated", "nearest", "mean")
# the retrieval baselines a weight generator must beat, and the random-text control
# (weightgen.eval.inits): similarity-weighted mean of the k nearest training LoRAs by text; the
# training LoRA with the lowest L1 on a few of the concept's own training pairs (forward only, its
# time counted); the nearest plus Gaussian noise as far from it as the generator's sample is; the
# generator fed another family's concept text
RETRIEVAL = ("knn-blend", "best-by-loss", "nearest-noise")
CONTROLS = ("random-text",)
# the splits a benchmark evaluates (weightgen.concepts.splits); `validation` (training families'
# concepts never collected) is where recipes and levers are chosen, its report is not a result
SPLITS = ("heldout", "novel", "validation")
# opt-in (BenchConfig.refine_strength): the nearest training LoRA refined by one denoising step of
# the generator from noise level `refine_strength` (SDEdit), so retrieval and generation combine
REFINED = "refined"
# opt-in (BenchConfig.blend): alpha * generated + (1 - alpha) * nearest (weightgen.initial.blend_loras),
# alpha chosen among `blend` on the validation split
BLENDED = "blended"
# opt-in (BenchConfig.pick): of generated, nearest, their blends and generated's enlarged update
# (weightgen.initial.pick_candidates), the one with the lowest L1 on best_pairs of the concept's
# training pairs; sampling, retrieval and scoring timed
PICKED = "picked"


@dataclass
class BenchConfig:
    # evaluated split: heldout (seen families), novel (unseen families), validation (choices)
    split: str = "heldout"
    # trained methods (empty: TRAINED + RETRIEVAL + CONTROLS, and refined / blended / picked when
    # set)
    methods: tuple[str, ...] = ()
    per_family: int = 2  # evaluated concepts fine-tuned per family
    skip_per_family: int = 0  # fine-tune the ones after each family's first K (a disjoint set)
    lora_steps: int = 300  # budget of every base + LoRA method
    scratch_max_steps: int = 2000  # scratch trains until its plateau, at most this many steps
    patience_steps: int = 300  # plateau: no gain of min_gain_db within this many steps
    min_gain_db: float = 0.2
    lora_plateau: bool = False  # base + LoRA methods also stop at their plateau (lora_steps: cap)
    # lora-zero trains to its plateau within this many steps (0: lora_steps); its plateau quality
    # is the hard target
    hard_max_steps: int = 0
    eval_every: int = 25  # after the dense early measurements (metrics.EARLY_STEPS, 1 ... 50)
    sweep_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    sweep_concepts: int = 4  # validation concepts, one from each of k evenly spread families
    sweep_steps: int = 300
    lrs: dict[str, float] = field(default_factory=dict)  # fixed rates: no sweep for these methods
    sample_steps: int = 1  # DDIM steps for `generated` (and `refined`)
    refine_strength: float | None = None  # in (0, 1]: adds the `refined` method
    # weights in (0, 1) on generated (the rest nearest): adds `blended`, with the weight whose
    # median step-0 PSNR on the validation split is best (one value: that weight)
    blend: float | tuple[float, ...] | None = ()
    pick: bool = False  # adds `picked`
    knn_k: tuple[int, ...] = (2, 4, 8)  # knn-blend's k: the best on validation at step 0
    best_pairs: int = 8  # best-by-loss scores each training LoRA on this many training pairs
    empty_text: bool = False  # ablation: the generator sees the empty text
    workers: int = 1  # > 1 (or RAY_ADDRESS set): one Ray task per concept
    seed: int = 0
    finetune: bool = True  # False: step-0 table (and ablations) only
    concepts: int | None = None  # at most this many fine-tuned held-out concepts (None: all chosen)
    step0_concepts: int | None = (
        None  # at most this many at step 0, families interleaved (None: all)
    )
    fid_weights: str | None = None  # local Inception weights (torch-fidelity format): adds FID

    def __post_init__(self):
        for name in (
            "per_family",
            "lora_steps",
            "scratch_max_steps",
            "eval_every",
            "sample_steps",
            "patience_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sweep_concepts < 0 or self.workers < 1 or self.skip_per_family < 0:
            raise ConfigError("sweep_concepts and skip_per_family must be >= 0, workers >= 1")
        if self.blend is None:
            self.blend = ()
        elif isinstance(self.blend, int | float):
            self.blend = (float(self.blend),)
        self.blend = tuple(float(b) for b in self.blend)
        self.knn_k = tuple(int(k) for k in self.knn_k)
        self.methods = tuple(self.methods)
        if self.split not in SPLITS and not self.split.startswith("family:"):
            raise ConfigError(
                f"bench.split must be one of {SPLITS} or family:NAME, got {self.split!r}"
            )
        if not self.knn_k or min(self.knn_k) < 1 or self.best_pairs < 1 or self.hard_max_steps < 0:
            raise ConfigError("knn_k must be integers >= 1, best_pairs >= 1, hard_max_steps >= 0")
        if self.refine_strength is not None and not 0.0 < self.refine_strength <= 1.0:
            raise ConfigError(f"refine_strength must be in (0, 1], got {self.refine_strength}")
        if any(not 0.0 < b < 1.0 for b in self.blend):
            raise ConfigError(
                f"blend must be in (0, 1) (0: nearest, 1: generated), got {list(self.blend)}"
            )
        known = self.available_methods
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ConfigError(f"unknown bench.methods {bad}; choose from {known}")
        bad = set(self.lrs) - set(known)
        if bad:
            raise ConfigError(f"unknown method(s) in lrs: {sorted(bad)}; choose from {known}")
        if any(v <= 0 for v in [*self.sweep_lrs, *self.lrs.values()]):
            raise ConfigError("learning rates must be > 0")
        self.sweep_lrs = tuple(float(v) for v in self.sweep_lrs)

    @property
    def available_methods(self) -> tuple[str, ...]:
        return (
            TRAINED
            + RETRIEVAL
            + CONTROLS
            + ((REFINED,) if self.refine_strength is not None else ())
            + ((BLENDED,) if self.blend else ())
            + ((PICKED,) if self.pick else ())
        )

    @property
    def trained(self) -> tuple[str, ...]:
        """The trained methods, in report order (scratch and lora-zero always: the targets)."""
        if not self.methods:
            return self.available_methods
        return tuple(
            m for m in self.available_methods if m in (*self.methods, "scratch", "lora-zero")
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
