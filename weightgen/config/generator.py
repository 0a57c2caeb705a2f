"""The generator's section of the config tree (`[generator]`): `TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightgen.errors import ConfigError

LOSS_WEIGHTS = ("uniform", "sensitivity")  # TrainConfig.loss_weight
# config values that fix the model or the data order: a resumed run must keep them
_RESUME_FIXED = (
    "size", "per_block", "use_block_index", "model_overrides", "batch_size", "seed", "stream",
    "paraphrases", "loss_weight", "neighbors", "neighbor_family_drop", "neighbor_pool",
    "pair_features", "pair_drop_prob",
)  # fmt: skip
# ... and, when streaming, these too (the DataLoader workers set the number of stream parts)
_RESUME_FIXED_STREAM = ("epoch_samples", "shuffle_buffer", "num_workers")


@dataclass
class TrainConfig:
    size: str = "tiny"  # model size: tiny | base | large (weightgen.diffusion.model.SIZES)
    per_block: bool = False  # the paper's mode: every block denoised alone
    use_block_index: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"depth": 6}
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32  # global (all ranks); each rank takes batch_size / world_size
    max_steps: int = 600
    warmup_steps: int = 50  # linear warm-up, then constant (resume-safe: no max_steps in it)
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ckpt_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    cond_drop_prob: float = 0.1
    # share of samples trained at t = T-1, the pure noise single-step sampling starts from
    # (measured, tiny, 300 steps: 1-step train MSE vs mean LoRA 0.59 at 0, 0.45 at 0.5)
    last_t_frac: float = 0.5
    zero_stage: int = 1
    bf16: bool | None = None  # None: on when CUDA supports bf16
    seed: int = 0
    num_workers: int = 0  # DataLoader workers preparing step batches
    # streaming (weightgen.train.stream) instead of loading the data set into memory
    stream: bool = False
    epoch_samples: int | None = None  # samples per epoch, all ranks (None: the data set's size)
    shuffle_buffer: int = 64  # samples per stream part in the shuffle buffer
    threads: int | None = None  # CPU intra-op threads per rank (None: torch's default); 1 on a
    # shared or oversubscribed CPU, where more threads can be ~10x slower
    gradient_checkpointing: bool = False
    # text augmentation: each step trains on a random phrasing of the concept (its text or one of
    # its paraphrases from meta.json, encoded at load time); in-memory data sets only
    paraphrases: bool = False
    # x0-loss weight per block value: "uniform" (every normalised value counts once) or
    # "sensitivity" (by how much each value moves the image, from the data set's
    # sensitivity.safetensors; weightgen.data.sensitivity.loss_weights)
    loss_weight: str = "uniform"
    # image loss (weightgen.train.imageloss): weight of the pixel MSE ([0, 1] units) between base +
    # the generator's one-step LoRA and each concept's exact edit, added to the x0 loss; 0: off.
    # Needs `base` (the base the data set was collected on) and the in-memory data set. Weights of
    # 20 and more diverge at lr 1e-3 (its gradients are 10-50x the x0 loss's)
    image_loss: float = 0.0
    image_loss_samples: int = 8  # concepts per step and rank in the image loss
    image_loss_crops: int = 16  # collection crops per concept held in memory ...
    image_loss_per_call: int = 4  # ... of which each concept uses this many per step
    # the image loss is on from (0-based) step `image_loss_start`, its weight rising linearly to
    # `image_loss` over `image_loss_ramp` steps (a curriculum: x0 loss first, image loss on resume).
    # Switched on in a resumed run, its gradients meet Adam moments sized for the x0 loss: the x0
    # loss jumps, then recovers over a few hundred steps
    image_loss_start: int = 0
    image_loss_ramp: int = 0
    base: str | None = None
    # text-embedding noise: every pooled and token vector of the conditioning moves by Gaussian
    # noise of norm ~`text_noise` x its own norm (padding stays 0), in the x0 and the image loss;
    # it smooths the map from text to weights between training concepts (a new concept's text sits
    # between them: pooled cosine ~0.96 to its nearest training text). 0: off
    text_noise: float = 0.0
    # warm start: a fresh run's weights (and so its EMA) start from this exported generator's EMA
    # weights instead of random ones; the model config (size, blocks, block size, text width)
    # must be the same. For a new data set on the same LoRA layout (e.g. a better base, re-
    # collected): the map from text to weights is learnt again from a trained network. A resumed
    # run takes its weights from its checkpoint and ignores this. None: random init
    init_from: str | None = None  # stored absolute: the benchmark finds it again to count its cost
    # retrieval as conditioning (weightgen.diffusion.neighbors): the K training concepts nearest in
    # text join the model's input and its prediction starts from their similarity-weighted blend;
    # in training a sample never retrieves its own concept, and with probability
    # `neighbor_family_drop` nothing of its own family (as for a concept of an unseen family).
    # 0: text only. In-memory data sets only
    neighbors: int = 0
    neighbor_family_drop: float = 0.0
    # M > K: in training, each step's K neighbours are drawn at random (most similar first) from
    # the M nearest, so that a concept's neighbour set varies and cannot be learnt by heart;
    # sampling always takes the K nearest. 0: the K nearest in training too
    neighbor_pool: int = 0
    # conditioning on the concept's own examples (weightgen.diffusion.pairs): each training sample
    # carries the description of 8 of its concept's collection pairs, replaced by a learned null
    # with probability `pair_drop_prob` (so text alone still works). Catalogue concepts only
    pair_features: bool = False
    pair_drop_prob: float = 0.3

    def image_loss_weight(self, step: int) -> float:
        """The image loss's weight at (0-based) training step `step`."""
        if self.image_loss == 0 or step < self.image_loss_start:
            return 0.0
        return self.image_loss * min(
            1.0, (step - self.image_loss_start + 1) / max(1, self.image_loss_ramp)
        )

    def __post_init__(self):
        if self.image_loss < 0:
            raise ConfigError(f"image_loss must be >= 0, got {self.image_loss}")
        if self.image_loss > 0 and self.stream:
            raise ConfigError("image_loss needs the in-memory data set: drop generator.stream")
        if self.image_loss_start < 0 or self.image_loss_ramp < 0:
            raise ConfigError("image_loss_start and image_loss_ramp must be >= 0")
        if not 0.0 <= self.text_noise <= 1.0:
            raise ConfigError(f"text_noise must be in [0, 1], got {self.text_noise}")
        if self.image_loss_samples < 1:
            raise ConfigError(f"image_loss_samples must be >= 1, got {self.image_loss_samples}")
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ConfigError(
                f"loss_weight must be one of {', '.join(LOSS_WEIGHTS)}, got {self.loss_weight!r}"
            )
        if self.paraphrases and self.stream:
            raise ConfigError(
                "paraphrases works on the in-memory data set only; drop --stream or --paraphrases"
            )
        from weightgen.diffusion.model import SIZES  # torch-only module, imported when checked

        if self.size not in SIZES:
            raise ConfigError(
                f"unknown model size {self.size!r}; choose one of: {', '.join(SIZES)}"
            )
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        for name in ("batch_size", "max_steps", "ckpt_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or None, got {self.threads}")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ConfigError(f"epoch_samples must be >= 1 or None, got {self.epoch_samples}")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.num_workers < 0:
            raise ConfigError("lr must be > 0, warmup_steps and num_workers >= 0")
        if not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError("ema_decay and cond_drop_prob must be in [0, 1)")
        if not 0.0 <= self.last_t_frac <= 1.0:
            raise ConfigError(f"last_t_frac must be in [0, 1], got {self.last_t_frac}")
        if self.neighbors < 0 or not 0.0 <= self.neighbor_family_drop <= 1.0:
            raise ConfigError("neighbors must be >= 0 and neighbor_family_drop in [0, 1]")
        if self.neighbor_pool and not 0 < self.neighbors <= self.neighbor_pool:
            raise ConfigError(
                f"neighbor_pool ({self.neighbor_pool}) is 0 or a pool of at least `neighbors` "
                f"({self.neighbors}) to draw retrieved neighbours from; set neighbors >= 1 first"
            )
        if (self.neighbors or self.pair_features) and self.stream:
            raise ConfigError(
                "neighbors and pair_features work on the in-memory data set only; drop stream"
            )
        if not 0.0 <= self.pair_drop_prob < 1.0:
            raise ConfigError(f"pair_drop_prob must be in [0, 1), got {self.pair_drop_prob}")
        self.model_overrides = dict(self.model_overrides)
        if self.init_from is not None:
            self.init_from = str(Path(self.init_from).resolve())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**d)
