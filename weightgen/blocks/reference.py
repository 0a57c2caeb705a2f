"""Torch reference of block normalisation and reassembly: the CPU path and the kernels' oracle.

normalize_ref:   flat (B, P) -> (B, N, S) = (gather(flat) - mean) / std, padding exactly 0
reassemble_ref:  blocks (B, N, S) -> flat (B, P) = scatter(blocks * std + mean), padding dropped
Arithmetic in float32 (one rounding per op, no FMA); statistics are float32 (N, S).
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightgen.blocks.layout import BlockLayout, LayoutMismatchError

DATA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_stats(layout: BlockLayout, mean: Tensor, std: Tensor, device: torch.device) -> None:
    want = (layout.num_blocks, layout.block_size)
    for what, t in (("mean", mean), ("std", std)):
        if tuple(t.shape) != want:
            raise LayoutMismatchError(f"{what}: expected shape {want}, got {tuple(t.shape)}")
        if t.dtype != torch.float32:
            raise TypeError(f"{what}: statistics must be float32, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{what} is on {t.device} but the data is on {device}")


def _check_dtype(what: str, dtype: torch.dtype) -> None:
    if dtype not in DATA_DTYPES:
        raise TypeError(f"{what}: dtype must be float32, bfloat16 or float16, got {dtype}")


def normalize_core(
    flat: Tensor, index: Tensor, mask: Tensor, mean: Tensor, std: Tensor, out_dtype: torch.dtype
) -> Tensor:
    """Unchecked, torch.compile-friendly: flat (..., P), index/mask (N, S) -> (..., N, S)."""
    x = flat[..., index].to(torch.float32)  # (..., N, S)
    y = (x - mean) / std  # (..., N, S) fp32
    y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y.to(out_dtype)


def reassemble_core(
    blocks: Tensor, positions: Tensor, mean: Tensor, std: Tensor, out_dtype: torch.dtype
) -> Tensor:
    """Unchecked, torch.compile-friendly: blocks (..., N, S), positions (P,) -> (..., P)."""
    x = blocks.to(torch.float32) * std + mean  # (..., N, S) fp32
    return x.flatten(-2)[..., positions].to(out_dtype)  # (..., P)


def normalize_ref(
    flat: Tensor,
    layout: BlockLayout,
    mean: Tensor,
    std: Tensor,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """flat (B, P) [or (P,)] -> (B, N, S) [or (N, S)] in out_dtype (default flat.dtype)."""
    _check_dtype("flat", flat.dtype)
    out_dtype = out_dtype or flat.dtype
    _check_dtype("out_dtype", out_dtype)
    if flat.dim() not in (1, 2) or flat.shape[-1] != layout.num_params:
        raise LayoutMismatchError(
            f"flat: expected (B, P) with P={layout.num_params}, got {tuple(flat.shape)}"
        )
    check_stats(layout, mean, std, flat.device)
    dev = flat.device
    return normalize_core(
        flat, layout.gather_index(dev), layout.valid_mask(dev), mean, std, out_dtype
    )


def reassemble_ref(
    blocks: Tensor,
    layout: BlockLayout,
    mean: Tensor,
    std: Tensor,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """blocks (B, N, S) [or (N, S)] -> flat (B, P) [or (P,)] in out_dtype (default blocks.dtype)."""
    _check_dtype("blocks", blocks.dtype)
    out_dtype = out_dtype or blocks.dtype
    _check_dtype("out_dtype", out_dtype)
    layout.check_blocks(blocks)
    check_stats(layout, mean, std, blocks.device)
    return reassemble_core(blocks, layout.valid_positions(blocks.device), mean, std, out_dtype)
