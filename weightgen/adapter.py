"""LoRA files a user holds: weightgen's flat safetensors file and PEFT's adapter folder.

  FILE.safetensors   {name: tensor} with adapter-free names (`stem.lora_A.weight`), metadata
                     strings (text, generator, seed; weightgen.lorafiles)
  DIR/               PEFT's adapter layout: adapter_config.json (peft.LoraConfig) and
                     adapter_model.safetensors (names prefixed `base_model.model.`), loadable by
                     `peft.PeftModel.from_pretrained(base_generator, DIR)`; weightgen.json beside
                     them keeps the text and provenance

Either loads back as the same state dict (`read_lora`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from weightgen.config import LoRAConfig
from weightgen.errors import WeightgenError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INFO_FILE = "weightgen.json"
PEFT_PREFIX = "base_model.model."


class LoRAFileError(WeightgenError):
    """A LoRA file or adapter folder that cannot be read (one line)."""


def peft_config(cfg: LoRAConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.targets),
        lora_dropout=0.0,
        bias="none",
    )


def save_adapter(
    lora: dict[str, torch.Tensor], out: str | os.PathLike, cfg: LoRAConfig, info: dict | None = None
) -> Path:
    """Write `lora` as a PEFT adapter folder `out` (created; files replaced atomically)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_config(cfg).save_pretrained(str(out))
    tmp = out / f".{ADAPTER_WEIGHTS}.tmp"
    save_file({PEFT_PREFIX + k: v.contiguous() for k, v in lora.items()}, str(tmp))
    os.replace(tmp, out / ADAPTER_WEIGHTS)
    tmp = out / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps({"format": "weightgen-lora", **(info or {})}, indent=2) + "\n")
    os.replace(tmp, out / INFO_FILE)
    return out


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict with adapter-free names, info) from a .safetensors file or a PEFT adapter
    folder; LoRAFileError when it is neither."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    p = Path(path).expanduser()
    try:
        if p.is_dir():
            weights = p / ADAPTER_WEIGHTS
            if not weights.is_file():
                raise LoRAFileError(
                    f"{p} is not a LoRA adapter folder: no {ADAPTER_WEIGHTS} (weightgen writes one "
                    "with new-concept, or give a .safetensors file)"
                )
            sd = load_file(str(weights))
            sd = {k.removeprefix(PEFT_PREFIX): v for k, v in sd.items()}
            sd = {k.replace(".default.", "."): v for k, v in sd.items()}
            info_path = p / INFO_FILE
            info = json.loads(info_path.read_text()) if info_path.is_file() else {}
            return sd, info
        if not p.is_file():
            raise LoRAFileError(f"no LoRA at {p}: give a .safetensors file or an adapter folder")
        with safe_open(str(p), framework="pt") as f:
            info = dict(f.metadata() or {})
        return load_file(str(p)), info
    except (SafetensorError, OSError, ValueError) as e:
        raise LoRAFileError(f"cannot read the LoRA {p}: {str(e).splitlines()[0]}") from None
