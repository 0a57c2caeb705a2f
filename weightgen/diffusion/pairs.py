"""A fixed description of an image edit from a few of its (input, target) pairs, for conditioning
the generator on a concept's own examples (TrainConfig.pair_features).

`edit_features(x, y)`: pairs (n, 3, H, W) in [0, 1] -> (PAIR_DIM,) float32, the same for any n >= 1
and any size (the pairs are resized to 64 x 64 first). Its parts, in order:
  - per-channel means of x, y and y - x, and standard deviations of x, y and y - x     (18)
  - the least-squares colour map y ~ M x + b over every pixel (M row-major, then b)  (12)
  - the RMS residual of that map: how far the edit is from a global colour transform   (1)
  - mean |Laplacian| and mean gradient magnitude of y over those of x (detail, edges)  (2)
  - the luminance histogram of y minus that of x, 8 bins                                (8)
  - the mean luminance change of y - x over a 4 x 4 grid (vignettes, local edits)      (16)
  - zeros to PAIR_DIM                                                                   (7)
No learned parameters: the generator learns what to read from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAIR_DIM = 64
SIZE = 64
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _resize(x: Tensor) -> Tensor:
    if x.shape[-2:] == (SIZE, SIZE):
        return x
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)


def _laplacian(x: Tensor) -> Tensor:
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    return F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k[None, None], padding=1)


def _gradient(x: Tensor) -> Tensor:
    g = x.reshape(-1, 1, *x.shape[-2:])
    gx, gy = g[..., :, 1:] - g[..., :, :-1], g[..., 1:, :] - g[..., :-1, :]
    return gx.abs().mean() + gy.abs().mean()


@torch.no_grad()
def edit_features(x: Tensor, y: Tensor) -> Tensor:
    """(n, 3, H, W) inputs and targets in [0, 1] -> (PAIR_DIM,) float32 (see the module doc)."""
    if x.ndim != 4 or x.shape != y.shape or x.shape[1] != 3 or x.shape[0] < 1:
        raise ValueError(f"pairs: expected two (n, 3, H, W) tensors, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")  # fmt: skip
    x, y = (_resize(t.detach().float().cpu().clamp(0, 1)) for t in (x, y))
    d = y - x
    dims = (0, 2, 3)
    stats = [t.mean(dims) for t in (x, y, d)] + [t.std(dims) for t in (x, y, d)]  # 6 x (3,)
    px = x.permute(0, 2, 3, 1).reshape(-1, 3)  # (P, 3)
    py = y.permute(0, 2, 3, 1).reshape(-1, 3)
    a = torch.cat([px, torch.ones(px.shape[0], 1)], dim=1)  # (P, 4)
    ridge = 1e-3 * torch.eye(4)
    coef = torch.linalg.solve(a.T @ a + ridge, a.T @ py)  # (4, 3): y ~ a @ coef
    colour = torch.cat([coef[:3].T.reshape(-1), coef[3]])  # M (3x3, row-major), b (3,)
    resid = (py - a @ coef).pow(2).mean().sqrt()
    eps = 1e-6
    detail = (_laplacian(y).abs().mean() + eps) / (_laplacian(x).abs().mean() + eps)
    edges = (_gradient(y) + eps) / (_gradient(x) + eps)
    lx = torch.einsum("nchw,c->nhw", x, _LUMA)
    ly = torch.einsum("nchw,c->nhw", y, _LUMA)
    hist = torch.histc(ly, 8, 0, 1) / ly.numel() - torch.histc(lx, 8, 0, 1) / lx.numel()
    grid = F.adaptive_avg_pool2d((ly - lx)[:, None], 4).mean(0).reshape(-1)  # (16,)
    parts = [*stats, colour, resid[None], detail.log()[None], edges.log()[None], hist, grid]
    out = torch.cat(parts)
    return F.pad(out, (0, PAIR_DIM - out.numel()))


def pair_features(pairs: Sequence[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, Tensor]:
    """One (x, y) per concept, or None where a concept has no pairs -> (features (B, PAIR_DIM),
    missing (B,) bool); a missing row is zeros (the model uses its learned null instead)."""
    feats = torch.zeros(len(pairs), PAIR_DIM)
    missing = torch.ones(len(pairs), dtype=torch.bool)
    for i, p in enumerate(pairs):
        if p is not None:
            feats[i], missing[i] = edit_features(*p), False
    return feats, missing


__all__ = ["PAIR_DIM", "edit_features", "pair_features"]
