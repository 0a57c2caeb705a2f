"""Recipes (`*.toml`) and DeepSpeed configs (`deepspeed/zero{1,2,3}.json`): package data, installed
as `weightgen.configs` (importlib.resources finds them in a wheel as in a checkout)."""
