"""A LoRA applied to a user's photos: base + LoRA run over images of any size.

The base generator works at its training size S (64 px for tiny) and its attention block's
position embedding has (S/4)^2 entries, so a larger image is processed
  tile    (default) at full resolution, in S x S tiles overlapping by S/4, blended with weights
          that fall linearly to their edges (no seams); an edit that depends on the whole frame
          (a vignette) is applied per tile
  resize  resized to S x S (antialiased) and edited there; the change (edited - input at S x S)
          is resized back and added to the full-resolution photo: whole-frame edits (a vignette, a
          graduated filter) stay whole and the photo keeps its detail, while changes of fine
          detail (blur, sharpen, edges) come out at S x S resolution
Images are RGB in [0, 1]; batches of tiles go through the model together.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgen.errors import WeightgenError

MODES = ("tile", "resize")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageInputError(WeightgenError):
    """Unusable input images (one line)."""


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image files of `path` (a file, or a folder's images sorted by name); ImageInputError
    when there are none or one cannot be opened as an image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageInputError(f"no images in {p} ({', '.join(IMAGE_SUFFIXES)})")
    elif p.is_file():
        files = [p]
    else:
        raise ImageInputError(f"no such image or folder: {p}")
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            raise ImageInputError(f"{f} is not an image PIL can read") from None
    return files


def load_image(path: Path) -> Tensor:
    """(3, H, W) float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def save_image(img: Tensor, path: Path) -> None:
    """PNG, written atomically (a temporary name in the same folder, then renamed)."""
    from PIL import Image

    a = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(a).save(tmp, format="PNG")
    os.replace(tmp, path)


def _ramp(size: int, overlap: int) -> Tensor:
    """(size,) weights: linear from 1/(overlap+1) up to 1 over `overlap` samples at each end."""
    w = torch.ones(size)
    if overlap:
        r = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        w[:overlap] = r
        w[-overlap:] = r.flip(0)
    return w


def _starts(length: int, size: int, stride: int) -> list[int]:
    s = list(range(0, max(length - size, 0) + 1, stride))
    if s[-1] + size < length:
        s.append(length - size)
    return s


class Editor:
    """base + LoRA, ready to edit images. `model`: E2GANGenerator with the LoRA loaded (eval);
    `tokens`, `mask`: the concept text's (1, L, D) tokens and (1, L) mask. The model runs on
    `device` (default: CUDA when there is one); images go in and come back on the CPU."""

    def __init__(
        self, model, tokens: Tensor, mask: Tensor, size: int, batch: int = 16, device=None
    ):
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(dev).eval()
        self.tokens, self.mask, self.device = tokens.to(dev), mask.to(dev), dev
        self.size, self.batch = size, batch

    @torch.no_grad()
    def _run(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> edited, batched."""
        from weightgen.gan.train import from_model, to_model

        out = []
        for i in range(0, x.shape[0], self.batch):
            xb = x[i : i + self.batch].to(self.device)
            n = xb.shape[0]
            y = self.model(to_model(xb), self.tokens.expand(n, -1, -1), self.mask.expand(n, -1))
            out.append(from_model(y).float().cpu())
        return torch.cat(out)

    def edit(self, img: Tensor, mode: str = "tile") -> Tensor:
        """(3, H, W) in [0, 1] -> edited (3, H, W)."""
        if mode not in MODES:
            raise ImageInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        s = self.size
        h, w = img.shape[-2:]
        if h == s and w == s:
            return self._run(img[None])[0]
        if mode == "resize":
            x = F.interpolate(img[None], size=(s, s), mode="bilinear", antialias=True)
            change = self._run(x) - x  # (1, 3, S, S)
            up = F.interpolate(change, size=(h, w), mode="bilinear", align_corners=False)
            return (img + up[0]).clamp(0, 1)
        # edge-pad to at least one tile, then overlapping tiles blended by ramp weights
        ph, pw = max(0, s - h), max(0, s - w)
        x = F.pad(img[None], (0, pw, 0, ph), mode="replicate")[0] if ph or pw else img
        H, W = x.shape[-2:]
        overlap = s // 4
        stride = s - overlap
        boxes = [(top, left) for top in _starts(H, s, stride) for left in _starts(W, s, stride)]
        tiles = torch.stack([x[:, top : top + s, left : left + s] for top, left in boxes])
        edited = self._run(tiles)
        weight = _ramp(s, overlap)[:, None] * _ramp(s, overlap)[None, :]  # (s, s)
        acc = torch.zeros(3, H, W)
        norm = torch.zeros(1, H, W)
        for (top, left), e in zip(boxes, edited):
            acc[:, top : top + s, left : left + s] += e * weight
            norm[:, top : top + s, left : left + s] += weight
        return (acc / norm)[:, :h, :w].clamp(0, 1)


def edit_files(
    editor: Editor,
    files: Sequence[Path],
    out: Path,
    *,
    mode: str = "tile",
    progress: bool = True,
) -> Iterator[Path]:
    """Edit each file into OUT/NAME.png (written atomically); yields the paths written."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    for f in tqdm(files, desc="apply", unit="image", disable=not progress):
        dst = out / f"{f.stem}.png"
        save_image(editor.edit(load_image(f), mode), dst)
        yield dst
