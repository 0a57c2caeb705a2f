"""Source photos shipped inside the scikit-image and scikit-learn wheels, and random crops of them.

Only loaders that read files inside the wheels are used (no pooch downloads). `skimage.data.cat`
is the same file as `chelsea`, and the two stereo motorcycle views show one scene, so each appears
once. The lfw faces (skimage's `lfw_subset`, 25x25 gray; the first 100 are faces) are tiled into
two mosaics of 49 faces each, one per split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COLLECT_PHOTOS", "EVAL_PHOTOS", "PHOTOS", "load_photo", "random_crops"]

MAX_SIDE = 512  # photos are downscaled (antialiased) so that min(H, W) <= MAX_SIDE


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if name == "stereo_motorcycle" else img

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _lfw_mosaic(first: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        faces = skimage.data.lfw_subset()[first : first + 49]  # (49, 25, 25) float in [0, 1]
        grid = faces.reshape(7, 7, 25, 25).transpose(0, 2, 1, 3).reshape(175, 175)
        return (grid * 255).round().astype(np.uint8)

    return load


PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "camera": _skimage("camera"),
    "china": _sklearn("china.jpg"),
    "lfw_faces_a": _lfw_mosaic(0),
    "flower": _sklearn("flower.jpg"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "retina": _skimage("retina"),
    "coins": _skimage("coins"),
    "lfw_faces_b": _lfw_mosaic(49),
}

COLLECT_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "china",
    "lfw_faces_a",
)
EVAL_PHOTOS: tuple[str, ...] = ("flower", "motorcycle", "retina", "coins", "lfw_faces_b")


@functools.cache
def _load(name: str) -> Tensor:
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    arr = np.array(PHOTOS[name](), copy=True)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[..., :3]
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()  # (3, H, W)
    x = x / 255.0 if arr.dtype == np.uint8 else x
    h, w = x.shape[-2:]
    if min(h, w) > MAX_SIDE:
        f = MAX_SIDE / min(h, w)
        size = (round(h * f), round(w * f))
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[
            0
        ]
    return x.clamp(0.0, 1.0).contiguous()


def load_photo(name: str) -> Tensor:
    """(3, H, W) float32 in [0, 1], min(H, W) <= 512; a copy of the cached tensor."""
    return _load(name).clone()


def random_crops(photos: Sequence[str], n: int, size: int, seed: int) -> Tensor:
    """(n, 3, size, size) float32 in [0, 1]: per crop a random photo, a square of side 0.3-1.0 of
    the photo's shorter side at a random position, resized (antialiased), flipped with p=0.5.
    Bit-identical for the same arguments (one torch.Generator, fixed draws per crop)."""
    if not photos:
        raise ValueError("random_crops needs at least one photo name")
    imgs = [_load(p) for p in photos]
    g = torch.Generator().manual_seed(int(seed))
    draws = torch.rand(n, 5, generator=g, dtype=torch.float64)  # photo, scale, top, left, flip
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        u_photo, u_scale, u_top, u_left, u_flip = draws[i].tolist()
        img = imgs[min(int(u_photo * len(imgs)), len(imgs) - 1)]
        h, w = img.shape[-2:]
        side = max(1, round((0.3 + 0.7 * u_scale) * min(h, w)))
        top = min(int(u_top * (h - side + 1)), h - side)
        left = min(int(u_left * (w - side + 1)), w - side)
        crop = img[:, top : top + side, left : left + side][None]  # (1, 3, side, side)
        crop = F.interpolate(
            crop, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False
        )
        out[i] = crop[0].flip(-1) if u_flip < 0.5 else crop[0]
    return out.clamp_(0.0, 1.0)
