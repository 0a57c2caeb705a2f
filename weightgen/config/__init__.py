"""The typed config tree (`weightgen.config.tree`) and its sections. Recipes are TOML files under
configs/ (installed as weightgen.configs): tiny.toml, demo.toml, paper.toml."""

from weightgen.config.bench import BLENDED, REFINED, TRAINED, BenchConfig
from weightgen.config.generator import LOSS_WEIGHTS, TrainConfig
from weightgen.config.sections import (
    BaseTrainConfig,
    CollectConfig,
    ConceptTrainConfig,
    GANConfig,
    LoRAConfig,
    SampleConfig,
)
from weightgen.config.tree import (
    RESOLVED_FILE,
    SECTIONS,
    Preset,
    add_config_args,
    config_names,
    load_config,
    only_sections,
    override,
    save_resolved,
)
from weightgen.errors import ConfigError

__all__ = [
    "BLENDED",
    "LOSS_WEIGHTS",
    "REFINED",
    "RESOLVED_FILE",
    "SECTIONS",
    "TRAINED",
    "BaseTrainConfig",
    "BenchConfig",
    "CollectConfig",
    "ConceptTrainConfig",
    "ConfigError",
    "GANConfig",
    "LoRAConfig",
    "Preset",
    "SampleConfig",
    "TrainConfig",
    "add_config_args",
    "config_names",
    "load_config",
    "only_sections",
    "override",
    "save_resolved",
]
