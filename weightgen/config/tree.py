"""The config tree: one typed recipe for every stage, read from `configs/NAME.toml` (or any TOML
file) plus `section.field=value` overrides, and saved resolved next to every output.

    name = "demo"
    extends = "tiny"          # optional: start from another config (files beside this one first)
    [generator]
    max_steps = 600

Sections: gan, lora, concept (one concept's fine-tune), base, collect, sample, generator, bench.
An override's value is read as a TOML value (`0.5`, `true`, `"text"`, `[1e-3, 3e-3]`,
`{scratch = 0.003}`); anything that is not one is taken as a string (paths, names), `none` clears an
optional field; the result is typed by the field and validated like a loaded file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from weightgen.config.bench import BenchConfig
from weightgen.config.generator import TrainConfig
from weightgen.config.sections import (
    BaseTrainConfig,
    CollectConfig,
    ConceptTrainConfig,
    GANConfig,
    LoRAConfig,
    SampleConfig,
    SplitConfig,
)
from weightgen.errors import ConfigError

RESOLVED_FILE = "resolved-config.json"

# the tree's typed sections: {field name of Preset: config class}
SECTIONS: dict[str, type] = {
    "gan": GANConfig,
    "lora": LoRAConfig,
    "concept": ConceptTrainConfig,
    "base": BaseTrainConfig,
    "collect": CollectConfig,
    "sample": SampleConfig,
    "generator": TrainConfig,
    "bench": BenchConfig,
    "split": SplitConfig,
}


@dataclass
class Preset:
    """A resolved recipe. The base and the data set save it (config.json): their GAN, LoRA and
    concept sections fix what every collected LoRA means."""

    name: str
    gan: GANConfig = field(default_factory=GANConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    concept: ConceptTrainConfig = field(default_factory=ConceptTrainConfig)
    base: BaseTrainConfig = field(default_factory=BaseTrainConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    generator: TrainConfig = field(default_factory=TrainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    text_model: str = "all-MiniLM-L6-v2"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        """From a dict of plain values (TOML, JSON); sections missing from it keep their defaults
        (a base saved before a section existed loads). ConfigError on unknown keys."""
        d = dict(d)
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - top
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}; sections: {list(SECTIONS)}")
        for key, kind in SECTIONS.items():
            if key in d and not isinstance(d[key], kind):
                if not isinstance(d[key], dict):
                    raise ConfigError(f"config section [{key}] must be a table")
                d[key] = _section(key, kind, d[key])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Preset:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _section(key: str, kind: type, values: dict[str, Any]):
    hints = typing.get_type_hints(kind)
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {key} config keys: {sorted(unknown)}; fields: {sorted(known)}")
    typed = {k: _coerce(f"{key}.{k}", v, hints[k]) for k, v in values.items()}
    return kind(**typed)


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """`value` (a TOML / JSON value) as the field type `hint`; ConfigError naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(where, value, inner[0]) if len(inner) == 1 else value
    if hint is Any:
        return value
    bad = ConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is tuple:
        if isinstance(value, str):  # "a,b": the comma list of the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(where, v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(f"{where}.{k}", v, args[1]) for k, v in value.items()}
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None


def config_names() -> list[str]:
    """The configs shipped in configs/ (package data weightgen.configs)."""
    root = importlib.resources.files("weightgen.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _locate(name: str, near: Path | None = None) -> Path:
    """A config by file path, by name beside the file that extends it, or by shipped name."""
    path = Path(name)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"no config file {name}")
        return path
    if near is not None and (near / f"{name}.toml").is_file():
        return near / f"{name}.toml"
    shipped = importlib.resources.files("weightgen.configs") / f"{name}.toml"
    if not shipped.is_file():
        raise ConfigError(
            f"unknown config {name!r}; choose one of: {', '.join(config_names())} "
            "or give a .toml file"
        )
    return Path(str(shipped))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _raw(name: str, near: Path | None = None, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = _locate(name, near).resolve()
    if path in seen:
        raise ConfigError(f"config {path} extends itself (through {', '.join(map(str, seen))})")
    d = _read_toml(path)
    d.setdefault("name", path.stem)  # a config's name is its own, never its parent's
    parent = d.pop("extends", None)
    if parent is not None:
        d = _merge(_raw(str(parent), path.parent, (*seen, path)), d)
    return d


def load_config(name: str = "tiny", overrides: Sequence[str] = ()) -> Preset:
    """The config `name` (a shipped name such as "tiny", or a .toml path), `extends` followed,
    with each "section.field=value" override applied, validated."""
    return override(Preset.from_dict(_raw(name)), overrides)


def override(preset: Preset, items: Sequence[str]) -> Preset:
    """A copy of `preset` with each "section.field=value" (or "text_model=value") applied."""
    if not items:
        return preset
    d = preset.to_dict()
    for item in items:
        key, sep, raw = item.partition("=")
        section, _, name = key.strip().rpartition(".")
        if not sep or not name:
            raise ConfigError(
                f"override {item!r}: expected section.field=value, e.g. gan.channels=16"
            )
        if section and section not in SECTIONS:
            raise ConfigError(
                f"override {item!r}: unknown section {section!r}; one of {tuple(SECTIONS)}"
            )
        target = d[section] if section else d
        if name not in target or (not section and name in SECTIONS):
            fields = sorted(target) if section else sorted(set(d) - set(SECTIONS))
            raise ConfigError(f"override {item!r}: no field {name!r}; fields: {fields}")
        target[name] = _literal(raw.strip())
    try:
        return Preset.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"override {', '.join(items)}: {e}") from None


def only_sections(items: Sequence[str], sections: Sequence[str], command: str) -> None:
    """ConfigError unless every override names one of `sections` (a command that works on an
    existing run can change only what the run does not already fix)."""
    for item in items:
        section = item.partition("=")[0].strip().rpartition(".")[0]
        if section not in sections:
            allowed = " or ".join(f"{s}.FIELD" for s in sections)
            raise ConfigError(
                f"{command} takes --set {allowed} only ({item!r}: the run's base fixes the rest)"
            )


def _literal(raw: str) -> Any:
    """A TOML value, or the text itself when it is none (a bare path or name)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def save_resolved(
    preset: Preset, folder: str | Path, *, source: str, overrides: Sequence[str] = ()
) -> Path:
    """Write the resolved tree to FOLDER/resolved-config.json: where it came from, the overrides
    given, and every value."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESOLVED_FILE
    record = {"source": source, "overrides": list(overrides), "config": preset.to_dict()}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def add_config_args(p: argparse.ArgumentParser, default: str | None = "tiny") -> None:
    """--config and --set, as every command and job takes them (default None: the command's
    own fallback, which its help names)."""
    p.add_argument(
        "--config",
        default=default,
        metavar="NAME|FILE",
        help="recipe: a name under configs/ or a .toml file (default: "
        + (default or "the run's own, saved with its base")
        + ")",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="change one config field (repeatable), e.g. generator.max_steps=200",
    )
