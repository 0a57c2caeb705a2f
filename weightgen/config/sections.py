"""The sections of the config tree that the GAN side reads: the base and concept GANs, LoRA, the
base's pre-training, one concept's fine-tune, collection and sampling (weightgen.config.tree)."""

from __future__ import annotations

from dataclasses import dataclass

from weightgen.errors import ConfigError


@dataclass
class GANConfig:
    image_size: int = 64
    channels: int = 8  # stem width; the bottleneck runs at 4x this
    n_res_blocks: int = 3
    heads: int = 2
    text_dim: int = 384  # token width of the text encoder
    max_text_tokens: int = 16
    unet_ngf: int = 16  # pix2pix U-Net (from-scratch baseline) width
    disc_ndf: int = 16
    disc_layers: int = 2

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16 (>= 16), got {self.image_size}")
        if self.channels * 4 % self.heads:
            raise ConfigError(
                f"4*channels ({4 * self.channels}) must divide by heads ({self.heads})"
            )


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 8.0
    shared_seed: int = 1234  # every concept's LoRA A starts from this seed (one weight basis)
    # module names of E2GANGenerator that carry LoRA (never the ResNet blocks)
    targets: tuple[str, ...] = (
        "stem",
        "down1",
        "down2",
        "attn.self_q",
        "attn.self_k",
        "attn.self_v",
        "attn.self_o",
        "attn.cross_q",
        "attn.cross_k",
        "attn.cross_v",
        "attn.cross_o",
        "up1",
        "up2",
        "head",
    )

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"lora rank must be >= 1, got {self.rank}")
        self.targets = tuple(self.targets)


@dataclass
class ConceptTrainConfig:
    """One concept's fine-tune (collection, finetune, evaluation)."""

    steps: int = 150
    batch_size: int = 4
    lr: float = 3e-3
    lambda_l1: float = 100.0
    gan_weight: float = 1.0  # adversarial term; 0 turns the discriminator off
    disc_lr: float = 2e-4
    eval_every: int = 25
    n_train_pairs: int = 48
    n_eval_pairs: int = 16

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "n_train_pairs", "n_eval_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class BaseTrainConfig:
    # about 400 s on one CPU core for the tiny preset
    steps: int = 8000
    batch_size: int = 8
    lr: float = 2e-3
    lambda_l1: float = 100.0
    gan_weight: float = 1.0
    pairs_per_concept: int = 32


@dataclass
class CollectConfig:
    block_size: int = 256
    seeds_per_concept: int = 1
    shard_maxcount: int = 64
    max_in_flight: int = 8
    num_cpus_per_task: float = 1.0
    num_gpus_per_task: float = 0.0
    max_retries: int = 2
    # vetting: a result outside these bounds is rejected and recorded with its reason
    max_abs_weight: float = 20.0
    min_psnr: float = 12.0
    max_psnr_drop: float = 0.5  # final PSNR may not be this much below step 0
    limit: int | None = None  # training concepts collected, families interleaved (None: all)

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"collect.limit must be >= 1 or none, got {self.limit}")
        if self.seeds_per_concept < 1:
            raise ConfigError(
                f"collect.seeds_per_concept must be >= 1, got {self.seeds_per_concept}"
            )


@dataclass
class SampleConfig:
    """Text -> LoRA (`weightgen sample`, jobs/sample.py, `finetune --init generated|blended`)."""

    steps: int = 1  # denoising steps: 1 is the paper's single step, more run DDIM
    guidance: float = 1.0  # classifier-free guidance scale (1: the conditional prediction alone)
    seed: int = 0
    blend: float = 0.5  # `blended`: blend x generated + (1 - blend) x the nearest training LoRA

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"sample.steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.blend <= 1.0:
            raise ConfigError(f"sample.blend must be in [0, 1], got {self.blend}")


@dataclass
class SplitConfig:
    """Which concepts each stage may see (weightgen.concepts.splits): the families held out of
    every training-side stage, and the training concepts carved off for tuning choices."""

    novel_families: tuple[str, ...] = ()  # with every composition that uses their operations
    validation_per_family: int = 0  # training concepts per family never collected

    def __post_init__(self):
        self.novel_families = tuple(self.novel_families)
        if self.validation_per_family < 0:
            raise ConfigError(
                f"split.validation_per_family must be >= 0, got {self.validation_per_family}"
            )
        if self.novel_families:
            from weightgen.concepts.catalogue import FAMILIES  # the catalogue's own names

            unknown = [f for f in self.novel_families if f not in FAMILIES]
            if unknown:
                raise ConfigError(
                    f"unknown split.novel_families {unknown}; choose from: {', '.join(FAMILIES)}"
                )
