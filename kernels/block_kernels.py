"""Fused block normalisation and reassembly (Triton).

block_normalize:  flat (B, P) -> out (B, N, S),  out[b, n, s] = (flat[b, off[n] + s] - mean[n, s])
                  / std[n, s] for s < len[n], exactly 0 on padding (s >= len[n]).
block_reassemble: blocks (B, N, S) -> out (B, P), out[b, off[n] + s] = blocks[b, n, s] * std[n, s]
                  + mean[n, s] for s < len[n]; padding is never read into or written to out.
Arithmetic in fp32 (division IEEE-rounded), data fp32/bf16/fp16, statistics fp32.
(off, len) come from a BlockLayout: blocks tile [0, P) exactly, so reassembly writes every value of
out. Every load and store is also masked by 0 <= off + s < P, so bad offsets cannot reach outside
the buffers. Oracle: weightgen.blocks.reference. Grid: 1-D, pid -> (batch tile, block n), n fastest.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

DATA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_BLOCK_SIZE = 1024  # S <= this: one program holds whole blocks (BLOCK_S = next pow2 of S)
ELEMS_PER_PROGRAM = 4096  # default BLOCK_B * BLOCK_S on GPU


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET set truthy)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------- kernels


@triton.jit
def _block_normalize_kernel(
    flat_ptr,  # (B, P) data, row stride stride_fb, unit column stride
    off_ptr,  # (N,) int
    len_ptr,  # (N,) int
    mean_ptr,  # (N, S) fp32 contiguous
    std_ptr,  # (N, S) fp32 contiguous
    out_ptr,  # (B, N, S) contiguous
    B,
    N,
    P,
    stride_fb,
    S: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid % N
    bt = pid // N
    s = tl.arange(0, BLOCK_S)  # (BS,)
    b = (bt * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # (BB,)
    off = tl.load(off_ptr + n).to(tl.int64)
    length = tl.load(len_ptr + n).to(tl.int64)
    src = off + s  # (BS,) int64
    s_ok = s < S
    valid = s_ok & (s < length) & (src >= 0) & (src < P)  # (BS,)
    b_ok = b < B  # (BB,)
    mean = tl.load(mean_ptr + n * S + s, mask=s_ok, other=0.0)  # (BS,)
    std = tl.load(std_ptr + n * S + s, mask=s_ok, other=1.0)  # (BS,)
    x = tl.load(
        flat_ptr + b[:, None] * stride_fb + src[None, :],
        mask=b_ok[:, None] & valid[None, :],
        other=0.0,
    ).to(tl.float32)  # (BB, BS)
    y = tl.math.div_rn(x - mean[None, :], std[None, :])  # (BB, BS)
    y = tl.where(valid[None, :], y, 0.0)
    dst = (b[:, None] * N + n) * S + s[None, :]  # (BB, BS)
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=b_ok[:, None] & s_ok[None, :])


@triton.jit
def _block_reassemble_kernel(
    blocks_ptr,  # (B, N, S) contiguous
    off_ptr,  # (N,) int
    len_ptr,  # (N,) int
    mean_ptr,  # (N, S) fp32 contiguous
    std_ptr,  # (N, S) fp32 contiguous
    out_ptr,  # (B, P), row stride stride_ob, unit column stride
    B,
    N,
    P,
    stride_ob,
    S: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid % N
    bt = pid // N
    s = tl.arange(0, BLOCK_S)  # (BS,)
    b = (bt * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # (BB,)
    off = tl.load(off_ptr + n).to(tl.int64)
    length = tl.load(len_ptr + n).to(tl.int64)
    dst = off + s  # (BS,) int64
    valid = (s < S) & (s < length) & (dst >= 0) & (dst < P)  # (BS,)
    mask = (b < B)[:, None] & valid[None, :]  # (BB, BS)
    mean = tl.load(mean_ptr + n * S + s, mask=valid, other=0.0)  # (BS,)
    std = tl.load(std_ptr + n * S + s, mask=valid, other=1.0)  # (BS,)
    x = tl.load(blocks_ptr + (b[:, None] * N + n) * S + s[None, :], mask=mask, other=0.0).to(
        tl.float32
    )  # (BB, BS)
    y = x * std[None, :] + mean[None, :]  # (BB, BS)
    tl.store(
        out_ptr + b[:, None] * stride_ob + dst[None, :], y.to(out_ptr.dtype.element_ty), mask=mask
    )


# ---------------------------------------------------------------------------------- launchers


def _check_device(what: str, t: Tensor) -> None:
    if t.is_cuda:
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise ValueError(
        f"{what} is on {t.device}: the Triton block kernels need CUDA tensors "
        "(or CPU tensors with TRITON_INTERPRET=1); use weightgen.blocks.normalize/reassemble"
    )


def _check_common(
    data: Tensor, offsets: Tensor, lengths: Tensor, mean: Tensor, std: Tensor
) -> tuple[int, int]:
    _check_device("data", data)
    if data.dtype not in DATA_DTYPES:
        raise TypeError(f"data dtype must be float32, bfloat16 or float16, got {data.dtype}")
    if mean.dim() != 2 or tuple(std.shape) != tuple(mean.shape):
        raise ValueError(
            f"mean/std must both be (N, S), got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    n, s = mean.shape
    if not 1 <= s <= MAX_BLOCK_SIZE:
        raise ValueError(f"block size S must be in 1..{MAX_BLOCK_SIZE}, got {s}")
    for what, t in (("offsets", offsets), ("lengths", lengths)):
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"{what} must be ({n},) like mean's N, got {tuple(t.shape)}")
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{what} must be int32 or int64, got {t.dtype}")
    for what, t in (("mean", mean), ("std", std)):
        if t.dtype != torch.float32:
            raise TypeError(f"{what} must be float32, got {t.dtype}")
    for what, t in (("offsets", offsets), ("lengths", lengths), ("mean", mean), ("std", std)):
        if t.device != data.device:
            raise ValueError(f"{what} is on {t.device} but the data is on {data.device}")
    return n, s


def _tile(batch: int, s: int, block_rows: int | None) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_B): BLOCK_S = next pow2 >= S; BLOCK_B rows per program (pow2)."""
    block_s = triton.next_power_of_2(s)
    if block_rows is None:
        block_rows = max(1, ELEMS_PER_PROGRAM // block_s)
    block_rows = min(triton.next_power_of_2(block_rows), triton.next_power_of_2(max(batch, 1)))
    return block_s, block_rows


def block_normalize(
    flat: Tensor,
    offsets: Tensor,
    lengths: Tensor,
    mean: Tensor,
    std: Tensor,
    out_dtype: torch.dtype | None = None,
    *,
    out: Tensor | None = None,
    block_rows: int | None = None,
    num_warps: int = 4,
) -> Tensor:
    """flat (B, P) -> normalised blocks (B, N, S) in out_dtype (default flat.dtype).

    offsets/lengths (N,) int from BlockLayout.block_offsets/block_lengths; mean/std (N, S) fp32.
    `out` (B, N, S) contiguous may be given; `block_rows` (pow2) overrides the batch tile.
    """
    if flat.dim() != 2:
        raise ValueError(f"flat must be (B, P), got {tuple(flat.shape)}")
    n, s = _check_common(flat, offsets, lengths, mean, std)
    if flat.stride(1) != 1:
        flat = flat.contiguous()
    bsz, p = flat.shape
    out_dtype = out_dtype or flat.dtype
    if out_dtype not in DATA_DTYPES:
        raise TypeError(f"out_dtype must be float32, bfloat16 or float16, got {out_dtype}")
    if out is None:
        out = torch.empty((bsz, n, s), dtype=out_dtype, device=flat.device)
    elif tuple(out.shape) != (bsz, n, s) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(
            f"out must be contiguous ({bsz}, {n}, {s}) {out_dtype}, got "
            f"{tuple(out.shape)} {out.dtype}"
        )
    if bsz == 0 or n == 0:
        return out
    block_s, block_b = _tile(bsz, s, block_rows)
    grid = (n * triton.cdiv(bsz, block_b),)
    _block_normalize_kernel[grid](
        flat, offsets, lengths, mean.contiguous(), std.contiguous(), out,
        bsz, n, p, flat.stride(0),
        S=s, BLOCK_S=block_s, BLOCK_B=block_b, num_warps=num_warps,
    )  # fmt: skip
    return out


def block_reassemble(
    blocks: Tensor,
    offsets: Tensor,
    lengths: Tensor,
    mean: Tensor,
    std: Tensor,
    num_params: int,
    out_dtype: torch.dtype | None = None,
    *,
    out: Tensor | None = None,
    block_rows: int | None = None,
    num_warps: int = 4,
) -> Tensor:
    """blocks (B, N, S) -> de-normalised flat (B, P=num_params) in out_dtype (default blocks').

    Values at padding positions (s >= lengths[n]) are never read into the output. Every value of
    the output is written when the blocks tile [0, P) (always so for BlockLayout offsets).
    """
    if blocks.dim() != 3:
        raise ValueError(f"blocks must be (B, N, S), got {tuple(blocks.shape)}")
    n, s = _check_common(blocks, offsets, lengths, mean, std)
    if tuple(blocks.shape[1:]) != (n, s):
        raise ValueError(f"blocks must be (B, {n}, {s}) like mean/std, got {tuple(blocks.shape)}")
    blocks = blocks.contiguous()
    bsz = blocks.shape[0]
    out_dtype = out_dtype or blocks.dtype
    if out_dtype not in DATA_DTYPES:
        raise TypeError(f"out_dtype must be float32, bfloat16 or float16, got {out_dtype}")
    if out is None:
        out = torch.empty((bsz, num_params), dtype=out_dtype, device=blocks.device)
    elif tuple(out.shape) != (bsz, num_params) or out.dtype != out_dtype or out.stride(1) != 1:
        raise ValueError(
            f"out must be ({bsz}, {num_params}) {out_dtype} with unit column stride, got "
            f"{tuple(out.shape)} {out.dtype}"
        )
    if bsz == 0 or n == 0:
        return out
    block_s, block_b = _tile(bsz, s, block_rows)
    grid = (n * triton.cdiv(bsz, block_b),)
    _block_reassemble_kernel[grid](
        blocks, offsets, lengths, mean.contiguous(), std.contiguous(), out,
        bsz, n, num_params, out.stride(0),
        S=s, BLOCK_S=block_s, BLOCK_B=block_b, num_warps=num_warps,
    )  # fmt: skip
    return out
