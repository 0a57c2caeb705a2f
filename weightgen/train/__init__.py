"""Generator training: DeepSpeed engine (ZeRO 1/2/3), step loop, EMA, checkpoints, export. Its
settings are the config tree's [generator] section (weightgen.config.TrainConfig)."""

from weightgen.train.checkpoint import complete_checkpoints, latest_checkpoint
from weightgen.train.data import TrainData, TrainError, load_train_data
from weightgen.train.trainer import deepspeed_config, train_generator

__all__ = [
    "TrainData",
    "TrainError",
    "complete_checkpoints",
    "deepspeed_config",
    "latest_checkpoint",
    "load_train_data",
    "train_generator",
]
