"""BlockLayout: a fixed order of named tensors, cut into blocks of S values.

Contract (DESIGN.md, Blocks): tensors are taken in layout order and flattened row-major into one
(P,) buffer; each tensor is cut into ceil(numel / S) blocks of S values that never cross a tensor
boundary; the tail block of a tensor is zero-padded; blocks are numbered 0..N-1 in buffer order.
The layout hash (names, shapes, S) is stored with every shard and every statistics file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from weightgen.errors import WeightgenError


class LayoutMismatchError(WeightgenError, ValueError):
    """A state dict, block tensor or statistics file does not match the layout it is used with."""


class BlockLayout:
    """Names and shapes of the tensors of one weight set, in a fixed order, and block size S."""

    def __init__(self, entries: Sequence[tuple[str, tuple[int, ...]]], block_size: int = 256):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        for entry in entries:
            name, shape = entry
            if not isinstance(name, str) or not name:
                raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
            shape = tuple(int(d) for d in shape)
            if any(d <= 0 for d in shape):
                raise ValueError(f"tensor {name!r}: every dimension must be positive, got {shape}")
            names.append(name)
            shapes.append(shape)
        if not names:
            raise ValueError("a BlockLayout needs at least one tensor")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"tensor names must be unique, repeated: {dup}")

        self.block_size: int = block_size
        self.names: list[str] = names
        self.shapes: list[tuple[int, ...]] = shapes
        self.numels: list[int] = [math.prod(s) for s in shapes]
        self.tensor_offsets: list[int] = [0]  # (T+1,) start of each tensor in the flat buffer
        for n in self.numels:
            self.tensor_offsets.append(self.tensor_offsets[-1] + n)
        self.num_params: int = self.tensor_offsets[-1]
        self.tensor_num_blocks: list[int] = [-(-n // block_size) for n in self.numels]
        self.num_blocks: int = sum(self.tensor_num_blocks)

        offsets, lengths, ids = [], [], []
        for t, (start, numel, nb) in enumerate(
            zip(self.tensor_offsets, self.numels, self.tensor_num_blocks)
        ):
            for j in range(nb):
                offsets.append(start + j * block_size)
                lengths.append(min(block_size, numel - j * block_size))
                ids.append(t)
        self._offsets = torch.tensor(offsets, dtype=torch.long)  # (N,)
        self._lengths = torch.tensor(lengths, dtype=torch.long)  # (N,) in 1..S
        self._ids = torch.tensor(ids, dtype=torch.long)  # (N,)
        s = torch.arange(block_size)
        self._mask = s[None, :] < self._lengths[:, None]  # (N, S)
        # (N, S) flat index of each block entry; padding points at the block's own start
        self._gindex = torch.where(self._mask, self._offsets[:, None] + s, self._offsets[:, None])
        # (P,) position in the flattened (N*S) block grid of each value of the flat buffer
        self._positions = torch.nonzero(self._mask.reshape(-1)).reshape(-1)
        self._device_cache: dict[tuple[str, torch.device], Tensor] = {}
        self.hash: str = hashlib.sha256(
            json.dumps(self._canonical(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    # ------------------------------------------------------------------ construction / IO

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], block_size: int = 256) -> BlockLayout:
        """Layout of `sd` with names sorted, so the order does not depend on dict order."""
        return cls([(k, tuple(sd[k].shape)) for k in sorted(sd)], block_size=block_size)

    def _canonical(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "block_size": self.block_size,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; `from_dict(to_dict())` gives an equal layout. `hash` is informative."""
        return {**self._canonical(), "hash": self.hash}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockLayout:
        try:
            layout = cls(
                list(zip(d["names"], [tuple(s) for s in d["shapes"]])),
                block_size=int(d["block_size"]),
            )
        except KeyError as e:
            raise ValueError(f"layout dict lacks key {e.args[0]!r}") from None
        if len(d["names"]) != len(d["shapes"]):
            raise ValueError("layout dict: 'names' and 'shapes' differ in length")
        if "hash" in d and d["hash"] != layout.hash:
            raise LayoutMismatchError(
                f"layout dict: stored hash {d['hash'][:12]} != recomputed {layout.hash[:12]}"
            )
        return layout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockLayout) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (
            f"BlockLayout(tensors={len(self.names)}, P={self.num_params}, "
            f"S={self.block_size}, N={self.num_blocks}, hash={self.hash[:12]})"
        )

    # ------------------------------------------------------------------ per-block index tensors

    def _cached(self, key: str, t: Tensor, device: torch.device | str | None) -> Tensor:
        if device is None:
            return t
        device = torch.device(device)
        if device.type == "cpu":
            return t
        k = (key, device)
        if k not in self._device_cache:
            self._device_cache[k] = t.to(device)
        return self._device_cache[k]

    def block_offsets(self, device: torch.device | str | None = None) -> Tensor:
        """(N,) int64: start of block n in the flat (P,) buffer. Treat as read-only."""
        return self._cached("offsets", self._offsets, device)

    def block_lengths(self, device: torch.device | str | None = None) -> Tensor:
        """(N,) int64: valid (non-padding) values of block n, in 1..S. Treat as read-only."""
        return self._cached("lengths", self._lengths, device)

    def block_tensor_ids(self, device: torch.device | str | None = None) -> Tensor:
        """(N,) int64: index into `names` of the tensor block n belongs to."""
        return self._cached("ids", self._ids, device)

    def valid_mask(self, device: torch.device | str | None = None) -> Tensor:
        """(N, S) bool: True where a block holds a weight, False on padding."""
        return self._cached("mask", self._mask, device)

    def gather_index(self, device: torch.device | str | None = None) -> Tensor:
        """(N, S) int64: flat index of each block entry; padding points at the block's start."""
        return self._cached("gindex", self._gindex, device)

    def valid_positions(self, device: torch.device | str | None = None) -> Tensor:
        """(P,) int64: index into the flattened (N*S) blocks of each value of the flat buffer."""
        return self._cached("positions", self._positions, device)

    # ------------------------------------------------------------------ state dict <-> flat/blocks

    def check_state_dict(self, sd: Mapping[str, Tensor]) -> None:
        """Raise LayoutMismatchError (one line) unless `sd` has exactly the layout's names/shapes."""
        missing = [n for n in self.names if n not in sd]
        extra = sorted(k for k in sd if k not in set(self.names))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {_short(missing)}")
            if extra:
                parts.append(f"unexpected {_short(extra)}")
            raise LayoutMismatchError(
                f"state dict does not match layout {self.hash[:12]}: " + "; ".join(parts)
            )
        for name, shape in zip(self.names, self.shapes):
            got = tuple(sd[name].shape)
            if got != shape:
                raise LayoutMismatchError(
                    f"tensor {name!r}: expected shape {shape}, got {got} (layout {self.hash[:12]})"
                )

    def flatten(self, sd: Mapping[str, Tensor]) -> Tensor:
        """state dict -> (P,) in layout order (dtype promoted across tensors)."""
        self.check_state_dict(sd)
        return torch.cat([sd[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """(P,) -> {name: view of shape}; (B, P) -> {name: (B, *shape)} (views where possible)."""
        if flat.dim() not in (1, 2) or flat.shape[-1] != self.num_params:
            raise LayoutMismatchError(
                f"flat buffer: expected (P,) or (B, P) with P={self.num_params}, "
                f"got {tuple(flat.shape)}"
            )
        lead = tuple(flat.shape[:-1])
        out = {}
        for name, shape, start, numel in zip(
            self.names, self.shapes, self.tensor_offsets, self.numels
        ):
            out[name] = flat[..., start : start + numel].reshape(*lead, *shape)
        return out

    def to_blocks(self, sd: Mapping[str, Tensor]) -> Tensor:
        """state dict -> (N, S) float32, tails zero-padded."""
        flat = self.flatten(sd).to(torch.float32)  # (P,)
        return flat_to_blocks(flat, self)

    def from_blocks(self, blocks: Tensor) -> dict[str, Tensor]:
        """(N, S) or (B, N, S) blocks -> state dict (padding dropped; dtype of `blocks`)."""
        return self.unflatten(blocks_to_flat(blocks, self))

    def check_blocks(self, blocks: Tensor, what: str = "blocks") -> None:
        n, s = self.num_blocks, self.block_size
        if blocks.dim() not in (2, 3) or tuple(blocks.shape[-2:]) != (n, s):
            raise LayoutMismatchError(
                f"{what}: expected (N, S) or (B, N, S) with N={n}, S={s}, got {tuple(blocks.shape)}"
            )


def flat_to_blocks(flat: Tensor, layout: BlockLayout) -> Tensor:
    """(..., P) -> (..., N, S) in flat's dtype, padding exactly 0 (plain gather, no stats)."""
    if flat.shape[-1] != layout.num_params:
        raise LayoutMismatchError(
            f"flat buffer: expected last dim P={layout.num_params}, got {tuple(flat.shape)}"
        )
    idx = layout.gather_index(flat.device)  # (N, S)
    mask = layout.valid_mask(flat.device)  # (N, S)
    blocks = flat[..., idx]  # (..., N, S)
    return torch.where(mask, blocks, torch.zeros((), dtype=flat.dtype, device=flat.device))


def blocks_to_flat(blocks: Tensor, layout: BlockLayout) -> Tensor:
    """(N, S) -> (P,), (B, N, S) -> (B, P): the valid entries in block order (padding dropped)."""
    layout.check_blocks(blocks)
    pos = layout.valid_positions(blocks.device)  # (P,)
    return blocks.flatten(-2)[..., pos]  # (..., P)


def _short(items: Sequence[str], k: int = 3) -> str:
    s = ", ".join(repr(x) for x in items[:k])
    return f"[{s}{', ...' if len(items) > k else ''}] ({len(items)})"
