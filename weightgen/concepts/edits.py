"""Parametric image edits and edit programs.

Every op is `fn(images, **params) -> images` on float tensors (B, 3, H, W) in [0, 1], returns the
same shape in [0, 1], is deterministic, and is built from kornia / torch tensor ops. Spatial
parameters (sigmas, kernel lengths) are given in pixels of a 64-pixel image and scale with
min(H, W) / 64, so a concept looks the same at every resolution. Colours are RGB tuples in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kornia
import torch
from torch import Tensor

__all__ = ["EDITS", "Edit", "ParamValue", "apply_program"]

ParamValue = float | str | tuple

REF_SIDE = 64  # spatial parameters are in pixels at this image side
_LUMA = (0.299, 0.587, 0.114)

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _scale(x: Tensor) -> float:
    return min(x.shape[-2:]) / REF_SIDE


def _odd(k: float, minimum: int = 3) -> int:
    k = max(minimum, int(round(k)))
    return k if k % 2 == 1 else k + 1


def _gray(x: Tensor) -> Tensor:
    return kornia.color.rgb_to_grayscale(x)  # (B, 1, H, W)


def _rgb(color: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(color, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def _chroma(color: Sequence[float], like: Tensor) -> Tensor:
    """Colour minus its luma: (1, 3, 1, 1); added to a gray value it keeps that value's luma."""
    c = _rgb(color, like)
    luma = sum(w * v for w, v in zip(_LUMA, color))
    return c - luma


def _gaussian(x: Tensor, sigma_px: float) -> Tensor:
    k = _odd(2 * math.ceil(3 * sigma_px) + 1)
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma_px, sigma_px), border_type="reflect")


def _edge_magnitude(gray: Tensor) -> Tensor:
    """Sobel gradient magnitude of (B, 1, H, W), ~1 at a hard black/white edge, times side/64."""
    g = kornia.filters.spatial_gradient(gray, mode="sobel", normalized=True)  # (B, 1, 2, H, W)
    mag = torch.sqrt(g.pow(2).sum(dim=2) + 1e-12)  # (B, 1, H, W)
    return mag * _scale(gray) * 2.0


def _clip(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Tone and colour grading
# ----------------------------------------------------------------------------------------------


def brightness(x: Tensor, delta: float) -> Tensor:
    return kornia.enhance.adjust_brightness(x, delta, clip_output=True)


def contrast(x: Tensor, factor: float) -> Tensor:
    """Contrast about mid-gray 0.5 (image-independent pivot)."""
    return _clip((x - 0.5) * factor + 0.5)


def gamma(x: Tensor, gamma: float) -> Tensor:
    return _clip(kornia.enhance.adjust_gamma(x, gamma))


def saturation(x: Tensor, factor: float) -> Tensor:
    return _clip(kornia.enhance.adjust_saturation(x, factor))


def hue(x: Tensor, degrees: float) -> Tensor:
    return _clip(kornia.enhance.adjust_hue(x, math.radians(degrees)))


def temperature(x: Tensor, amount: float) -> Tensor:
    """amount > 0 warms (more red, less blue), < 0 cools."""
    gain = torch.tensor([1 + amount, 1 + 0.2 * amount, 1 - amount], dtype=x.dtype, device=x.device)
    return _clip(x * gain.view(1, 3, 1, 1))


def fade(x: Tensor, amount: float) -> Tensor:
    """Matte look: lifts blacks to 0.25*amount and pulls whites down to 1 - 0.15*amount."""
    return _clip(x * (1 - 0.4 * amount) + 0.25 * amount)


# ----------------------------------------------------------------------------------------------
# Tints, duotones, colour maps, sepia
# ----------------------------------------------------------------------------------------------


def tint(x: Tensor, color: tuple, strength: float) -> Tensor:
    """Blend towards the image's luminance re-coloured with `color` (colour blend mode)."""
    colourised = _clip(_gray(x) + _chroma(color, x))
    return _clip(torch.lerp(x, colourised, strength))


def duotone(x: Tensor, dark: tuple, light: tuple) -> Tensor:
    """Luminance 0 -> `dark`, 1 -> `light`, linear in between."""
    lum = _gray(x)
    d, li = _rgb(dark, x), _rgb(light, x)
    return _clip(d + lum * (li - d))


def split_tone(x: Tensor, shadows: tuple, highlights: tuple, strength: float) -> Tensor:
    """Adds the chroma of `shadows` where dark and of `highlights` where bright."""
    lum = _gray(x)
    shift = (1 - lum) * _chroma(shadows, x) + lum * _chroma(highlights, x)
    return _clip(x + strength * shift)


@functools.lru_cache(maxsize=64)
def _colormap(name: str, device: str) -> kornia.color.ColorMap:
    return kornia.color.ColorMap(
        base=name, num_colors=256, device=torch.device(device), dtype=torch.float32
    )


def colormap(x: Tensor, name: str, mix: float, reverse: float = 0.0) -> Tensor:
    """Maps luminance through a named kornia colour map, blended with the image by `mix`."""
    lum = _gray(x).clamp(0, 1)
    if reverse:
        lum = 1 - lum
    mapped = kornia.color.apply_colormap(
        lum.float(), _colormap(name, str(x.device))
    )  # (B, 3, H, W)
    mapped = mapped.to(x.dtype)
    return _clip(torch.lerp(x, mapped, mix))


def sepia(x: Tensor, strength: float) -> Tensor:
    sep = kornia.color.sepia_from_rgb(x, rescale=False) / 1.351  # white -> (1.0, 0.89, 0.69)
    return _clip(torch.lerp(x, sep, strength))


# ----------------------------------------------------------------------------------------------
# Posterise, quantise, threshold
# ----------------------------------------------------------------------------------------------


def posterize(x: Tensor, bits: float) -> Tensor:
    return _clip(kornia.enhance.posterize(x.clamp(0, 1), int(bits)))


def levels(x: Tensor, k: float, mono: float = 0.0) -> Tensor:
    """Rounds each channel (or the luminance, when mono) to k evenly spaced levels."""
    k = int(k)
    src = _gray(x).expand(-1, 3, -1, -1) if mono else x
    return _clip(torch.round(src * (k - 1)) / (k - 1))


def threshold(x: Tensor, level: float) -> Tensor:
    """Black-and-white stencil: luminance >= level -> white."""
    return (_gray(x) >= level).to(x.dtype).expand(-1, 3, -1, -1).contiguous()


# ----------------------------------------------------------------------------------------------
# Blur and sharpen
# ----------------------------------------------------------------------------------------------


def blur(x: Tensor, sigma: float) -> Tensor:
    return _clip(_gaussian(x, sigma * _scale(x)))


def motion_blur(x: Tensor, length: float, angle: float) -> Tensor:
    k = _odd(length * _scale(x))
    return _clip(kornia.filters.motion_blur(x, k, float(angle), 0.0, border_type="reflect"))


def sharpen(x: Tensor, amount: float, sigma: float) -> Tensor:
    """Unsharp mask: x + amount * (x - gaussian(x, sigma))."""
    return _clip(x + amount * (x - _gaussian(x, sigma * _scale(x))))


# ----------------------------------------------------------------------------------------------
# Edges, sketches, emboss
# ----------------------------------------------------------------------------------------------


def edges(x: Tensor, strength: float, style: str) -> Tensor:
    """style: 'sketch' dark lines on white, 'glow' white lines on black, 'color' lines in image colour."""
    mag = _clip(strength * _edge_magnitude(_gray(x)))  # (B, 1, H, W)
    if style == "sketch":
        return (1 - mag).expand(-1, 3, -1, -1).contiguous()
    if style == "glow":
        return mag.expand(-1, 3, -1, -1).contiguous()
    if style == "color":
        return _clip(x * mag)
    raise ValueError(f"edges: unknown style {style!r}; use sketch, glow or color")


def pencil(x: Tensor, sigma: float, darkness: float) -> Tensor:
    """Colour-dodge pencil sketch: gray / (1 - blur(1 - gray)), then ** darkness."""
    g = _gray(x)
    b = _gaussian(1 - g, sigma * _scale(x))
    out = _clip(g / (1 - b + 1e-2)).pow(darkness)
    return out.expand(-1, 3, -1, -1).contiguous()


def emboss(x: Tensor, strength: float, angle: float, color: float) -> Tensor:
    """Relief lit from `angle` degrees (0 = from the left, 90 = from the top); color in [0, 1] mixes
    the gray relief (0) with the relief added to the image's colours (1)."""
    g = kornia.filters.spatial_gradient(_gray(x), mode="sobel", normalized=True)  # (B, 1, 2, H, W)
    a = math.radians(angle)
    d = (math.cos(a) * g[:, :, 0] + math.sin(a) * g[:, :, 1]) * _scale(x) * 2.0  # (B, 1, H, W)
    gray_relief = (0.5 + strength * d).expand(-1, 3, -1, -1)
    colour_relief = x + strength * d
    return _clip(torch.lerp(gray_relief, colour_relief, color))


# ----------------------------------------------------------------------------------------------
# Cartoon and painterly
# ----------------------------------------------------------------------------------------------


def cartoon(x: Tensor, levels: float, edge: float, smooth: float) -> Tensor:
    """Bilateral smoothing (spatial sigma `smooth`) -> k-level colours -> dark outlines (gain `edge`)."""
    s = _scale(x)
    k = _odd(2 * math.ceil(1.5 * smooth * s) + 1)
    sm = kornia.filters.bilateral_blur(x, (k, k), 0.15, (smooth * s, smooth * s))
    q = torch.round(sm.clamp(0, 1) * (levels - 1)) / (levels - 1)
    if edge <= 0:
        return _clip(q)
    line = _clip(edge * (_edge_magnitude(_gray(sm)) - 0.1) * 2.0)  # (B, 1, H, W)
    return _clip(q * (1 - line))


def paint(x: Tensor, size: float, boost: float) -> Tensor:
    """Painterly median filter (window `size` px at 64) with saturation multiplied by `boost`."""
    k = _odd(size * _scale(x))
    m = kornia.filters.median_blur(x, (k, k))
    return _clip(kornia.enhance.adjust_saturation(m, boost))


# ----------------------------------------------------------------------------------------------
# Vignette, invert, channels
# ----------------------------------------------------------------------------------------------


def vignette(x: Tensor, strength: float, radius: float, color: tuple = (0.0, 0.0, 0.0)) -> Tensor:
    """Blend towards `color` outside `radius` (0 centre, 1 corner), smoothstep falloff."""
    h, w = x.shape[-2:]
    ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device).view(h, 1)
    xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).view(1, w)
    r = torch.sqrt(ys.pow(2) + xs.pow(2)) / math.sqrt(2)  # (H, W) in [0, 1]
    t = ((r - radius) / max(1 - radius, 1e-3)).clamp(0, 1)
    mask = strength * t * t * (3 - 2 * t)  # (H, W)
    return _clip(torch.lerp(x, _rgb(color, x).expand_as(x), mask))


def invert(x: Tensor) -> Tensor:
    return _clip(kornia.enhance.invert(x))


def invert_channels(x: Tensor, channels: str) -> Tensor:
    """Inverts the named channels, e.g. 'r' or 'gb'."""
    flip = torch.tensor([c in channels for c in "rgb"], device=x.device).view(1, 3, 1, 1)
    return torch.where(flip, 1 - x, x)


def invert_lightness(x: Tensor) -> Tensor:
    """Inverts CIE-L* lightness, keeps a* and b*."""
    lab = kornia.color.rgb_to_lab(x.clamp(0, 1))
    lab = torch.cat([100 - lab[:, :1], lab[:, 1:]], dim=1)
    return _clip(kornia.color.lab_to_rgb(lab, clip=True))


def solarize(x: Tensor, threshold: float) -> Tensor:
    return _clip(kornia.enhance.solarize(x, threshold))


def channel_swap(x: Tensor, order: str) -> Tensor:
    """order: permutation of 'rgb' naming the source of each output channel, e.g. 'bgr'."""
    idx = ["rgb".index(c) for c in order]
    return x[:, idx]


# ----------------------------------------------------------------------------------------------
# Registry and programs
# ----------------------------------------------------------------------------------------------

EDITS: dict[str, Callable[..., Tensor]] = {
    fn.__name__: fn
    for fn in (
        brightness,
        contrast,
        gamma,
        saturation,
        hue,
        temperature,
        fade,
        tint,
        duotone,
        split_tone,
        colormap,
        sepia,
        posterize,
        levels,
        threshold,
        blur,
        motion_blur,
        sharpen,
        edges,
        pencil,
        emboss,
        cartoon,
        paint,
        vignette,
        invert,
        invert_channels,
        invert_lightness,
        solarize,
        channel_swap,
    )
}


def _freeze(v: Any) -> ParamValue:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple):
        return tuple(float(e) for e in v)
    raise TypeError(f"edit parameter {v!r}: use a number, a string or a tuple of numbers")


@dataclass(frozen=True)
class Edit:
    """One op call. params: sorted ((name, value), ...); value float | str | tuple[float, ...]."""

    op: str
    params: tuple[tuple[str, ParamValue], ...] = ()

    def __post_init__(self) -> None:
        if self.op not in EDITS:
            raise ValueError(f"unknown edit op {self.op!r}; known: {', '.join(sorted(EDITS))}")
        frozen = tuple(sorted((str(k), _freeze(v)) for k, v in self.params))
        object.__setattr__(self, "params", frozen)

    @classmethod
    def of(cls, op: str, **params: Any) -> Edit:
        return cls(op, tuple(params.items()))

    def kwargs(self) -> dict[str, ParamValue]:
        return dict(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Edit:
        return cls(d["op"], tuple(d.get("params", {}).items()))

    def __call__(self, images: Tensor) -> Tensor:
        return EDITS[self.op](images, **self.kwargs())


def apply_program(program: Sequence[Edit], images: Tensor) -> Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, H, W) float in [0, 1]; edits applied left to right."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"apply_program expects float images (B, 3, H, W); got {tuple(images.shape)} {images.dtype}"
        )
    x = images.clamp(0.0, 1.0)
    for edit in program:
        x = edit(x).clamp(0.0, 1.0)
    return x
