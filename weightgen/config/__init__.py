"""The typed config tree (`weightgen.config.tree`) and its sections. Recipes are TOML files under
configs/ (installed as weightgen.configs): tiny.toml, demo.toml, paper.toml."""

from weightgen.config.bench import (
    BLENDED,
    CONTROLS,
    PICKED,
    REFINED,
    RETRIEVAL,
    TRAINED,
    BenchConfig,
)
from weightgen.config.generator import LOSS_WEIGHTS, TrainConfig
from weightgen.config.sections import (
    BaseTrainConfig,
    CollectConfig,
    ConceptTrainConfig,
    GANConfig,
    LoRAConfig,
    SampleConfig,
    SplitConfig,
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
    "CONTROLS",
    "LOSS_WEIGHTS",
    "PICKED",
    "REFINED",
    "RESOLVED_FILE",
    "RETRIEVAL",
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
    "SplitConfig",
    "TrainConfig",
    "add_config_args",
    "config_names",
    "load_config",
    "only_sections",
    "override",
    "save_resolved",
]
