"""The benchmark's section of the config tree (`[bench]`): which held-out concepts, budgets, the
learning-rate sweep and the opt-in methods; the protocol itself is weightgen.eval.protocol's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from weightgen.errors import ConfigError

TRAINED = ("scratch", "lora-zero", "generated", "nearest", "mean")
# opt-in (BenchConfig.refine_strength): the nearest training LoRA refined by one denoising step of
# the generator from noise level `refine_strength` (SDEdit), so retrieval and generation combine
REFINED = "refined"
# opt-in (BenchConfig.blend): blend * generated + (1 - blend) * nearest (weightgen.initial.blend_loras), the
# generator's guess kept at a trained LoRA's scale
BLENDED = "blended"


@dataclass
class BenchConfig:
    per_family: int = 2  # held-out concepts fine-tuned per family (13 families -> 26 concepts)
    skip_per_family: int = 0  # fine-tune the ones after each family's first K (a disjoint set)
    lora_steps: int = 300  # budget of every base + LoRA method
    scratch_max_steps: int = 2000  # scratch trains until its plateau, at most this many steps
    patience_steps: int = 300  # plateau: no gain of min_gain_db within this many steps
    min_gain_db: float = 0.2
    lora_plateau: bool = False  # base + LoRA methods also stop at their plateau (lora_steps: cap)
    eval_every: int = 25  # after the dense early measurements (metrics.EARLY_STEPS, 1 ... 50)
    sweep_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    sweep_concepts: int = 4  # training concepts, one from each of k evenly spread families
    sweep_steps: int = 300
    lrs: dict[str, float] = field(default_factory=dict)  # fixed rates: no sweep for these methods
    sample_steps: int = 1  # DDIM steps for `generated` (and `refined`)
    refine_strength: float | None = None  # in (0, 1]: adds the `refined` method
    blend: float | None = None  # in (0, 1): adds `blended`, this weight on generated, rest nearest
    empty_text: bool = False  # ablation: the generator sees the empty text
    workers: int = 1  # > 1 (or RAY_ADDRESS set): one Ray task per concept
    seed: int = 0
    finetune: bool = True  # False: step-0 table (and ablations) only
    concepts: int | None = None  # at most this many fine-tuned held-out concepts (None: all chosen)
    step0_concepts: int | None = None  # at most this many held-out concepts at step 0 (None: all)
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
        if self.refine_strength is not None and not 0.0 < self.refine_strength <= 1.0:
            raise ConfigError(f"refine_strength must be in (0, 1], got {self.refine_strength}")
        if self.blend is not None and not 0.0 < self.blend < 1.0:
            raise ConfigError(
                f"blend must be in (0, 1) (0: nearest, 1: generated), got {self.blend}"
            )
        bad = set(self.lrs) - set(self.methods)
        if bad:
            raise ConfigError(
                f"unknown method(s) in lrs: {sorted(bad)}; choose from {self.methods}"
            )
        if any(v <= 0 for v in [*self.sweep_lrs, *self.lrs.values()]):
            raise ConfigError("learning rates must be > 0")
        self.sweep_lrs = tuple(float(v) for v in self.sweep_lrs)

    @property
    def methods(self) -> tuple[str, ...]:
        """The trained methods, in report order."""
        return (
            TRAINED
            + ((REFINED,) if self.refine_strength is not None else ())
            + ((BLENDED,) if self.blend is not None else ())
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
