"""Per-block normalisation statistics over a data set of weight sets.

Streaming and exact to float64: each `update` computes the batch's mean and sum of squared
deviations, merged with the running ones by Chan et al.'s parallel formula (no sum-of-squares
cancellation). std is the population std (ddof=0), floored at eps. Padding gets mean 0, std 1.

mode="element": statistics per (block, position) over samples.
mode="block":   statistics per block over samples and the block's valid entries, broadcast to S.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weightgen.blocks.layout import BlockLayout, LayoutMismatchError


@dataclass
class BlockStats:
    mean: Tensor  # (N, S) float32
    std: Tensor  # (N, S) float32, >= eps on valid entries, 1 on padding
    layout_hash: str
    count: int  # samples seen

    def to(self, device: torch.device | str) -> BlockStats:
        return BlockStats(self.mean.to(device), self.std.to(device), self.layout_hash, self.count)

    def check(self, layout: BlockLayout) -> None:
        """Raise LayoutMismatchError unless these statistics belong to `layout`."""
        if self.layout_hash != layout.hash:
            raise LayoutMismatchError(
                f"block stats: layout hash {self.layout_hash[:12]} != expected {layout.hash[:12]}"
            )
        want = (layout.num_blocks, layout.block_size)
        for what, t in (("mean", self.mean), ("std", self.std)):
            if tuple(t.shape) != want:
                raise LayoutMismatchError(
                    f"block stats {what}: expected shape {want}, got {tuple(t.shape)}"
                )

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors {mean, std} with metadata {layout_hash, count}; atomic rename."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file(
            {
                "mean": self.mean.detach().to("cpu", torch.float32).contiguous(),
                "std": self.std.detach().to("cpu", torch.float32).contiguous(),
            },
            str(tmp),
            metadata={"layout_hash": self.layout_hash, "count": str(int(self.count))},
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_layout_hash: str | None = None) -> BlockStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            if not {"mean", "std"} <= keys or "layout_hash" not in meta:
                raise ValueError(f"{path}: not a block stats file (needs mean, std, layout_hash)")
            mean, std = f.get_tensor("mean"), f.get_tensor("std")
        stats = cls(mean, std, meta["layout_hash"], int(meta.get("count", 0)))
        if expected_layout_hash is not None and stats.layout_hash != expected_layout_hash:
            raise LayoutMismatchError(
                f"{path}: block stats are for layout {stats.layout_hash[:12]}, "
                f"expected {expected_layout_hash[:12]}; recompute the stats for this data set"
            )
        return stats


class BlockStatsAccumulator:
    """Streaming per-block mean/std. `update` takes (N, S) or (B, N, S) numpy arrays or tensors."""

    def __init__(self, layout: BlockLayout, mode: str = "element", eps: float = 1e-6):
        if mode not in ("element", "block"):
            raise ValueError(f"mode must be 'element' or 'block', got {mode!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.layout, self.mode, self.eps = layout, mode, float(eps)
        n, s = layout.num_blocks, layout.block_size
        self._mask = layout.valid_mask().numpy()  # (N, S) bool
        self._len = layout.block_lengths().numpy().astype(np.float64)[:, None]  # (N, 1)
        width = s if mode == "element" else 1
        self.count = 0  # samples
        self._mean = np.zeros((n, width), np.float64)  # (N, S) or (N, 1)
        self._m2 = np.zeros((n, width), np.float64)  # sum of squared deviations

    def update(self, blocks: np.ndarray | Tensor) -> None:
        if isinstance(blocks, Tensor):
            blocks = blocks.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(blocks, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        self.layout.check_blocks(torch.empty(x.shape, device="meta"), what="stats update")
        nb = x.shape[0]
        if nb == 0:
            return
        if not np.isfinite(x[:, self._mask]).all():
            raise ValueError("stats update: blocks hold NaN or inf values")
        if self.mode == "element":
            b_cnt = float(nb)
            b_mean = x.mean(axis=0)  # (N, S)
            b_m2 = ((x - b_mean) ** 2).sum(axis=0)  # (N, S)
            a_cnt = float(self.count)
        else:
            xm = np.where(self._mask, x, 0.0)  # (B, N, S)
            b_cnt = nb * self._len  # (N, 1)
            b_mean = xm.sum(axis=(0, 2))[:, None] / b_cnt  # (N, 1)
            dev = np.where(self._mask, x - b_mean[None], 0.0)  # (B, N, S)
            b_m2 = (dev**2).sum(axis=(0, 2))[:, None]  # (N, 1)
            a_cnt = self.count * self._len  # (N, 1)
        tot = a_cnt + b_cnt
        delta = b_mean - self._mean
        self._mean = self._mean + delta * (b_cnt / tot)
        self._m2 = self._m2 + b_m2 + delta**2 * (a_cnt * b_cnt / tot)
        self.count += nb

    def finalize(self) -> BlockStats:
        if self.count == 0:
            raise ValueError("BlockStatsAccumulator.finalize: no samples were added")
        cnt = float(self.count) if self.mode == "element" else self.count * self._len
        mean = np.broadcast_to(self._mean, self._mask.shape)  # (N, S)
        std = np.maximum(np.sqrt(np.broadcast_to(self._m2 / cnt, self._mask.shape)), self.eps)
        mean = np.where(self._mask, mean, 0.0)
        std = np.where(self._mask, std, 1.0)
        return BlockStats(
            mean=torch.from_numpy(mean.astype(np.float32)),
            std=torch.from_numpy(std.astype(np.float32)),
            layout_hash=self.layout.hash,
            count=self.count,
        )
