"""Block diffusion transformer (BlockDiT), noise schedule and loss, single-/multi-step sampler."""

from weightgen.diffusion.model import SIZES, BlockDiT, block_dit, count_params
from weightgen.diffusion.sampler import (
    GeneratorBundle,
    GeneratorError,
    generate_lora,
    load_generator,
    sample_blocks,
)
from weightgen.diffusion.schedule import (
    BETA_SCHEDULE,
    NUM_TRAIN_TIMESTEPS,
    diffusion_loss,
    make_ddim_scheduler,
    make_train_scheduler,
)

__all__ = [
    "BETA_SCHEDULE",
    "NUM_TRAIN_TIMESTEPS",
    "SIZES",
    "BlockDiT",
    "GeneratorBundle",
    "GeneratorError",
    "block_dit",
    "count_params",
    "diffusion_loss",
    "generate_lora",
    "load_generator",
    "make_ddim_scheduler",
    "make_train_scheduler",
    "sample_blocks",
]
