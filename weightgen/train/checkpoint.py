"""Checkpoints (`OUT/checkpoints/step-NNNNNNN/`), the EMA of the weights, and the export.

A checkpoint folder holds DeepSpeed's files (`engine.save_checkpoint`, every rank), `ema.safetensors`
and `trainer.json` (rank 0), and `COMPLETE`, written last by rank 0 after a barrier: only folders
with COMPLETE are resumed from; older complete ones beyond `keep_last` are pruned.

The EMA lives on rank 0 in float32. Under ZeRO-3 each rank holds a shard of every large parameter,
so updates and exports run inside `deepspeed.zero.GatheredParameters` (a collective: every rank
enters it); under ZeRO-1/2 the module's parameters are whole on every rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

CKPT_DIR = "checkpoints"
COMPLETE = "COMPLETE"
EMA_FILE = "ema.safetensors"
TRAINER_FILE = "trainer.json"
_STEP_RE = re.compile(r"step-(\d{7,})")


def step_tag(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, folder)] of the complete checkpoints under OUT, oldest first."""
    root = Path(out) / CKPT_DIR
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.fullmatch(p.name)
            if m and (p / COMPLETE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: str | os.PathLike) -> tuple[int, Path] | None:
    found = complete_checkpoints(out)
    return found[-1] if found else None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------


class EMA:
    """Float32 exponential moving average of `module`'s parameters, kept on rank 0 only.

    decay at step k is min(decay, (1 + k) / (10 + k)): short runs are not dominated by init.
    """

    def __init__(self, module: torch.nn.Module, decay: float, *, zero_stage: int, is_main: bool):
        self.module, self.decay, self.zero3, self.is_main = module, decay, zero_stage == 3, is_main
        self.params = [(n, p) for n, p in module.named_parameters()]
        self.shadow: dict[str, Tensor] = {}
        with self._gathered():
            if is_main:
                self.shadow = {n: p.detach().float().clone() for n, p in self.params}

    def _gathered(self):
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for _, p in self.params], modifier_rank=None)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call on every rank after each optimizer step (collective under ZeRO-3)."""
        d = self.decay_at(step)
        with self._gathered():
            if self.is_main:
                for n, p in self.params:
                    self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1.0 - d)

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load(self, path: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        if not self.is_main:
            return
        sd = load_file(str(path))
        missing = set(self.shadow) ^ set(sd)
        if missing:
            raise ValueError(f"{path}: EMA names differ from the model's: {sorted(missing)[:3]}")
        for n, t in sd.items():
            self.shadow[n].copy_(t)


# --------------------------------------------------------------------------------------------
# Save / resume
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    engine,
    ema: EMA,
    out: str | os.PathLike,
    step: int,
    state: dict,
    *,
    keep_last: int,
    is_main: bool,
) -> Path:
    """Every rank calls this. Returns OUT/checkpoints/step-NNNNNNN (COMPLETE once it returns)."""
    from safetensors.torch import save_file

    root = Path(out) / CKPT_DIR
    tag = step_tag(step)
    folder = root / tag
    if is_main:
        if folder.exists():  # a torn earlier attempt at the same step
            shutil.rmtree(folder)
        root.mkdir(parents=True, exist_ok=True)
    _barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    if is_main:
        save_file(ema.state_dict(), str(folder / EMA_FILE))
        _write_atomic(folder / TRAINER_FILE, json.dumps({**state, "step": step}, indent=1).encode())
    _barrier()
    if is_main:
        _write_atomic(folder / COMPLETE, b"")
        for old_step, old in complete_checkpoints(out)[:-keep_last]:
            if old_step != step:
                shutil.rmtree(old, ignore_errors=True)
        for p in root.iterdir():  # torn folders older than this one
            m = _STEP_RE.fullmatch(p.name)
            if m and int(m.group(1)) < step and not (p / COMPLETE).exists():
                shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return folder


def load_checkpoint(engine, ema: EMA, folder: Path) -> int:
    """Every rank calls this; restores module, optimizer, LR schedule and EMA. Returns the step."""
    path, client = engine.load_checkpoint(
        str(folder.parent),
        tag=folder.name,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {folder}")
    ema.load(folder / EMA_FILE)
    return int(client["step"])


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_ema(model_cls, config: dict, ema: EMA, folder: str | os.PathLike) -> None:
    """Rank 0: a fresh `model_cls(config)` with the EMA weights -> save_pretrained(folder)."""
    folder = Path(folder)
    model = model_cls.from_config(config)
    model.load_state_dict(ema.state_dict(), strict=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def export_fp32(out: str | os.PathLike, folder: str | os.PathLike, step: int | None = None) -> Path:
    """A complete checkpoint's consolidated fp32 weights -> BlockDiT.save_pretrained(folder).

    DeepSpeed's zero_to_fp32 merges the per-rank optimizer partitions of any ZeRO stage and world
    size in one process (no GPU, no process group). `step` defaults to the newest complete
    checkpoint; the model config comes from the run's export (`OUT/model/config.json`).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from weightgen.diffusion.model import BlockDiT

    out, folder = Path(out), Path(folder)
    found = dict(complete_checkpoints(out))
    if not found or (step is not None and step not in found):
        want = "any complete checkpoint" if step is None else f"complete checkpoint {step}"
        raise FileNotFoundError(f"{out}: no {want} under {CKPT_DIR}/")
    step = max(found) if step is None else step
    config = out / "model" / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{out}: model/config.json missing (export the run first)")
    sd = get_fp32_state_dict_from_zero_checkpoint(str(out / CKPT_DIR), tag=step_tag(step))
    model = BlockDiT.from_config(BlockDiT.load_config(str(config.parent)))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
