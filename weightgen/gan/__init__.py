"""GANs: the E2GAN-like base with text cross-attention, the pix2pix U-Net + PatchGAN baseline, LoRA
(peft), `train_concept` (one concept's fine-tune) and the base pre-training."""

from weightgen.gan.base import BaseNotFoundError, build_base, is_complete, load_base, save_base
from weightgen.gan.lora import attach_lora, init_shared_lora, load_lora, lora_state_dict
from weightgen.gan.models import E2GANGenerator, PatchDiscriminator, UNetGenerator
from weightgen.gan.train import (
    ConceptResult,
    CurvePoint,
    build_concept_model,
    evaluate,
    pretrain_base,
    train_concept,
)

__all__ = [
    "BaseNotFoundError",
    "ConceptResult",
    "CurvePoint",
    "E2GANGenerator",
    "PatchDiscriminator",
    "UNetGenerator",
    "attach_lora",
    "build_base",
    "build_concept_model",
    "evaluate",
    "init_shared_lora",
    "is_complete",
    "load_base",
    "load_lora",
    "lora_state_dict",
    "pretrain_base",
    "save_base",
    "train_concept",
]
