"""The tests' recipe: `--config PLAIN` keeps every field at its default (configs/tiny.toml holds the
measured chain, far longer than a test), plus `--set` pairs for the fields a test changes."""

from pathlib import Path

PLAIN = str(Path(__file__).resolve().parent / "plain.toml")


def sets(**fields) -> list[str]:
    """["--set", "generator.max_steps=6", ...] from section__field=value keywords."""
    out = []
    for key, value in fields.items():
        section, _, name = key.partition("__")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += ["--set", f"{section}.{name}={text}"]
    return out
