"""weightgen: initial LoRA weights for a new image edit, generated from its text.

    from weightgen import WeightGenerator, Base, LoRA

The names load on first use (`weightgen.api`), so `import weightgen` and the CLI stay light.
"""

from __future__ import annotations

__all__ = ["Base", "LoRA", "WeightGenerator"]


def __getattr__(name: str):
    if name in __all__:
        from weightgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'weightgen' has no attribute {name!r}")
