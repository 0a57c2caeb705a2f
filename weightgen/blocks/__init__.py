"""Weights <-> blocks: BlockLayout, per-block statistics, normalise / reassemble.

`normalize` and `reassemble` dispatch: CUDA tensors go to the fused Triton kernels in
`weightgen_kernels.block_kernels` (imported lazily; the reference with a one-time warning if that import
fails), everything else to the torch reference. backend="torch"/"triton" forces one (for tests
and benchmarks). Importing this package needs neither triton nor a GPU.
"""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import Tensor

from weightgen.blocks.layout import (
    BlockLayout,
    LayoutMismatchError,
    blocks_to_flat,
    flat_to_blocks,
)
from weightgen.blocks.reference import check_stats, normalize_ref, reassemble_ref
from weightgen.blocks.stats import BlockStats, BlockStatsAccumulator

__all__ = [
    "BlockLayout",
    "BlockStats",
    "BlockStatsAccumulator",
    "LayoutMismatchError",
    "blocks_to_flat",
    "flat_to_blocks",
    "normalize",
    "normalize_ref",
    "reassemble",
    "reassemble_ref",
]

_kernels = None  # module weightgen_kernels.block_kernels, False once its import failed


def _pick(t: Tensor, backend: str):
    """The kernels module for `t` under `backend` ("auto" | "triton" | "torch"), or None."""
    if backend == "torch":
        return None
    if backend == "triton":
        return importlib.import_module(
            "weightgen_kernels.block_kernels"
        )  # ImportError: caller's to see
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return _get_kernels() if t.is_cuda else None


def _get_kernels():
    global _kernels
    if _kernels is None:
        try:
            _kernels = importlib.import_module("weightgen_kernels.block_kernels")
        except ImportError as e:
            warnings.warn(
                f"Triton block kernels unavailable ({e}); using the torch reference on CUDA",
                RuntimeWarning,
                stacklevel=3,
            )
            _kernels = False
    return _kernels or None


def normalize(
    flat: Tensor,
    layout: BlockLayout,
    mean: Tensor,
    std: Tensor,
    out_dtype: torch.dtype | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """flat (B, P) [or (P,)] -> normalised blocks (B, N, S) [or (N, S)], padding exactly 0."""
    k = _pick(flat, backend)
    if k is None:
        return normalize_ref(flat, layout, mean, std, out_dtype)
    if flat.dim() not in (1, 2) or flat.shape[-1] != layout.num_params:
        raise LayoutMismatchError(
            f"flat: expected (B, P) with P={layout.num_params}, got {tuple(flat.shape)}"
        )
    check_stats(layout, mean, std, flat.device)
    out = k.block_normalize(
        flat.reshape(-1, layout.num_params),
        layout.block_offsets(flat.device),
        layout.block_lengths(flat.device),
        mean,
        std,
        out_dtype=out_dtype,
    )  # (B, N, S)
    return out[0] if flat.dim() == 1 else out


def reassemble(
    blocks: Tensor,
    layout: BlockLayout,
    mean: Tensor,
    std: Tensor,
    out_dtype: torch.dtype | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """blocks (B, N, S) [or (N, S)] -> de-normalised flat (B, P) [or (P,)], padding dropped."""
    k = _pick(blocks, backend)
    if k is None:
        return reassemble_ref(blocks, layout, mean, std, out_dtype)
    layout.check_blocks(blocks)
    check_stats(layout, mean, std, blocks.device)
    out = k.block_reassemble(
        blocks.reshape(-1, layout.num_blocks, layout.block_size),
        layout.block_offsets(blocks.device),
        layout.block_lengths(blocks.device),
        mean,
        std,
        num_params=layout.num_params,
        out_dtype=out_dtype,
    )  # (B, P)
    return out[0] if blocks.dim() == 2 else out
