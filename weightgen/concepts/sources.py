"""Sources of paired data beyond the built-in catalogue, usable wherever a concept is: each has an
``id``, ``text``, ``paraphrases``, ``family`` and ``pairs(n, size, seed, split)`` returning
``(inputs, targets)``, both (n, 3, size, size) float32 in [0, 1], deterministic for a seed.

- ``FolderPairs``: a user's folder of aligned pairs in the pix2pix layouts: ``A/`` and ``B/`` with
  the same file names (``combine_A_and_B.py``'s input), or side-by-side ``AB`` images, A on the left
  (``combine_A_and_B.py``'s output; a ``train/`` sub-folder of such images is also accepted).
- ``DiffusionEditPairs``: an InstructPix2Pix-style diffusers pipeline loaded from a local folder
  (``StableDiffusionInstructPix2PixPipeline.from_pretrained(path)``) edits random crops of the
  collection photos by one instruction; the instruction is the concept text.

``fingerprint()`` hashes what determines the pairs (file contents, or the pipeline's configs and
weights plus the sampling settings), so collected results can be keyed by it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weightgen.concepts.images import random_crops
from weightgen.concepts.pairs import PAIR_SPLITS
from weightgen.errors import WeightgenError

__all__ = [
    "DiffusionEditPairs",
    "FolderPairs",
    "PairSourceError",
    "open_pair_folder",
    "open_pairs_root",
    "pair_sources",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
EVAL_EVERY = 5  # FolderPairs: every 5th file (sorted) is held out for the "eval" split
_ID_RE = re.compile(r"[A-Za-z0-9_-]+")


class PairSourceError(WeightgenError):
    """A pair folder or pipeline folder that cannot be used; one line naming it and the fix."""


def _check_id(source_id: str) -> str:
    if not _ID_RE.fullmatch(source_id):
        raise PairSourceError(
            f"source id {source_id!r}: use letters, digits, '_' and '-' only (it names samples)"
        )
    return source_id


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "pairs"


def _images(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


@functools.lru_cache(maxsize=256)
def _read_image(path: str, mtime_ns: int) -> Tensor:
    """(3, H, W) float32 in [0, 1]; cached per (path, mtime)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise PairSourceError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _load(path: Path) -> Tensor:
    return _read_image(str(path), path.stat().st_mtime_ns)


def _split_names(names: tuple[str, ...], split: str) -> tuple[str, ...]:
    """Deterministic, disjoint splits of the sorted names; one file serves both splits."""
    if split not in PAIR_SPLITS:
        raise ValueError(f"unknown pair split {split!r}; use 'collect' or 'eval'")
    if len(names) < 2:
        return names
    held = tuple(n for i, n in enumerate(names) if i % EVAL_EVERY == EVAL_EVERY - 1) or names[-1:]
    return held if split == "eval" else tuple(n for n in names if n not in held)


@dataclass(frozen=True)
class FolderPairs:
    """Aligned pairs in a folder. Build it with ``open_pair_folder`` (checks the folder)."""

    root: Path
    id: str
    text: str
    layout: str  # "ab" (A/ and B/ folders) or "side-by-side" (AB images)
    names: tuple[str, ...]  # image file names, sorted
    images_dir: Path  # where side-by-side images live (root or root/train)
    direction: str = "AtoB"  # AtoB: A is the input, B the target; BtoA swaps them
    paraphrases: tuple[str, ...] = ()
    family: str = "folder"
    program: tuple = field(default=(), compare=False)  # no edit program: data, not code

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.text, *self.paraphrases)

    def _pair(self, name: str) -> tuple[Tensor, Tensor]:
        if self.layout == "ab":
            a, b = _load(self.root / "A" / name), _load(self.root / "B" / name)
            if a.shape != b.shape:  # aligned pairs of different resolution: B follows A
                b = F.interpolate(
                    b[None], size=a.shape[-2:], mode="bilinear", antialias=True, align_corners=False
                )[0]
        else:
            ab = _load(self.images_dir / name)
            w = ab.shape[-1] // 2
            a, b = ab[..., :w], ab[..., w : 2 * w]
        return (a, b) if self.direction == "AtoB" else (b, a)

    def pairs(
        self, n: int, size: int = 64, seed: int = 0, split: str = "collect"
    ) -> tuple[Tensor, Tensor]:
        """n random aligned crops (the same box in A and B), side 0.5-1.0 of the shorter side,
        resized to size x size, flipped together with p=0.5."""
        names = _split_names(self.names, split)
        g = torch.Generator().manual_seed(int(seed) + (0 if split == "collect" else 7919))
        draws = torch.rand(n, 5, generator=g, dtype=torch.float64)  # file, scale, top, left, flip
        inputs = torch.empty(n, 3, size, size)
        targets = torch.empty(n, 3, size, size)
        for i in range(n):
            u_file, u_scale, u_top, u_left, u_flip = draws[i].tolist()
            a, b = self._pair(names[min(int(u_file * len(names)), len(names) - 1)])
            h, w = a.shape[-2:]
            side = max(1, round((0.5 + 0.5 * u_scale) * min(h, w)))
            top = min(int(u_top * (h - side + 1)), h - side)
            left = min(int(u_left * (w - side + 1)), w - side)
            both = torch.stack([a, b])[..., top : top + side, left : left + side]  # (2, 3, s, s)
            both = F.interpolate(
                both, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False
            )
            if u_flip < 0.5:
                both = both.flip(-1)
            inputs[i], targets[i] = both[0], both[1]
        return inputs.clamp_(0, 1), targets.clamp_(0, 1)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.layout, self.direction, self.names]).encode())
        for name in self.names:
            files = (
                [self.root / "A" / name, self.root / "B" / name]
                if self.layout == "ab"
                else [self.images_dir / name]
            )
            for f in files:
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "kind": "folder",
            "root": str(self.root),
            "layout": self.layout,
            "direction": self.direction,
            "files": len(self.names),
        }


def open_pair_folder(
    path: str | os.PathLike,
    text: str,
    *,
    id: str | None = None,
    direction: str = "AtoB",
    paraphrases: tuple[str, ...] = (),
) -> FolderPairs:
    """Check ``path`` and describe its pairs; PairSourceError (one line) when it cannot be used."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PairSourceError(
            f"pair folder {root} does not exist (or is not a folder); give a folder with A/ and B/ "
            "sub-folders of matching images, or of side-by-side AB images"
        )
    if direction not in ("AtoB", "BtoA"):
        raise PairSourceError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
    if not isinstance(text, str) or not text.strip():
        raise PairSourceError(f"pair folder {root}: give the concept text of its edit")
    source_id = _check_id(id if id is not None else f"pairs-{_slug(root.resolve().name)}")
    a_dir, b_dir = root / "A", root / "B"
    if a_dir.is_dir() or b_dir.is_dir():
        if not (a_dir.is_dir() and b_dir.is_dir()):
            missing = b_dir if a_dir.is_dir() else a_dir
            raise PairSourceError(
                f"pair folder {root}: {missing} is missing; A/ and B/ go together"
            )
        a, b = _images(a_dir), _images(b_dir)
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        if only_a or only_b:
            parts = []
            if only_a:
                parts.append(f"{len(only_a)} only in A/ (e.g. {', '.join(only_a[:3])})")
            if only_b:
                parts.append(f"{len(only_b)} only in B/ (e.g. {', '.join(only_b[:3])})")
            raise PairSourceError(
                f"pair folder {root}: A/ and B/ names differ: {'; '.join(parts)}; every image in "
                "A/ needs the image of the same name in B/"
            )
        if not a:
            raise PairSourceError(
                f"pair folder {root}: A/ and B/ hold no images ({IMAGE_SUFFIXES})"
            )
        return FolderPairs(
            root, source_id, text, "ab", tuple(a), root, direction, tuple(paraphrases)
        )
    images_dir = root / "train" if not _images(root) and (root / "train").is_dir() else root
    names = _images(images_dir)
    if not names:
        raise PairSourceError(
            f"pair folder {root}: no images; expected A/ and B/ sub-folders or side-by-side AB "
            f"images ({', '.join(IMAGE_SUFFIXES)})"
        )
    for name in names:
        from PIL import Image

        with Image.open(images_dir / name) as im:
            w, h = im.size
        if w < 2 or w < h:
            raise PairSourceError(
                f"side-by-side image {images_dir / name} is {w}x{h}: expected A and B side by side "
                "(width about twice the height)"
            )
    return FolderPairs(
        root,
        source_id,
        text,
        "side-by-side",
        tuple(names),
        images_dir,
        direction,
        tuple(paraphrases),
    )


def open_pairs_root(path: str | os.PathLike) -> list[FolderPairs]:
    """One FolderPairs per sub-folder of ``path`` holding a ``text.txt``: its first line is the
    concept text, further non-empty lines paraphrases; the id is ``pairs-<sub-folder name>``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PairSourceError(f"pairs root {root} does not exist (or is not a folder)")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise PairSourceError(
            f"pairs root {root} has no sub-folders: give one folder per concept, each with its "
            "pairs and a text.txt"
        )
    out = []
    for sub in subs:
        text_file = sub / "text.txt"
        if not text_file.is_file():
            raise PairSourceError(
                f"{sub} has no text.txt: write the concept's sentence on its first line"
            )
        lines = [ln.strip() for ln in text_file.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise PairSourceError(f"{text_file} is empty: write the concept's sentence in it")
        out.append(
            open_pair_folder(
                sub, lines[0], id=f"pairs-{_slug(sub.name)}", paraphrases=tuple(lines[1:])
            )
        )
    return out


def pair_sources(
    pairs_root: str | None = None,
    editor: str | None = None,
    instructions: list[str] | None = None,
    instructions_file: str | None = None,
) -> list:
    """The command line's pair sources: every concept folder under ``pairs_root``, and one
    ``DiffusionEditPairs`` of the pipeline ``editor`` per instruction (given, or one per line of
    ``instructions_file``)."""
    texts = list(instructions or [])
    if instructions_file:
        try:
            lines = Path(instructions_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise PairSourceError(f"cannot read {instructions_file}: {e.strerror}") from None
        texts += [ln.strip() for ln in lines if ln.strip()]
    if bool(texts) != bool(editor):
        raise PairSourceError(
            "--editor PATH and --instruction TEXT (or --instructions FILE) go together"
        )
    sources: list = open_pairs_root(pairs_root) if pairs_root else []
    return sources + [DiffusionEditPairs.open(editor, t) for t in texts]


# ------------------------------------------------------------------------------------------------
# An image-editing diffusion pipeline (InstructPix2Pix style)
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _pipeline(path: str, device: str):
    """Loaded once per process and folder (the object itself stays small and picklable)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError, TypeError) as e:
        raise PairSourceError(
            f"cannot load an InstructPix2Pix pipeline from {path}: "
            f"{(str(e).splitlines() or [type(e).__name__])[0]}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@dataclass(frozen=True)
class DiffusionEditPairs:
    """Targets = the pipeline's edit of random collection-photo crops by ``text`` (the instruction)."""

    model_path: Path
    id: str
    text: str
    steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    device: str = "cpu"
    batch_size: int = 8
    paraphrases: tuple[str, ...] = ()
    family: str = "diffusion-edit"
    program: tuple = field(default=(), compare=False)

    @classmethod
    def open(cls, model_path: str | os.PathLike, text: str, *, id: str | None = None, **kw):
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise PairSourceError(
                f"pipeline folder {path} does not exist; give a local folder saved with "
                "save_pretrained (model_index.json, unet/, vae/, text_encoder/, tokenizer/, ...)"
            )
        if not (path / "model_index.json").is_file():
            raise PairSourceError(
                f"{path} is not a diffusers pipeline folder (no model_index.json)"
            )
        if not isinstance(text, str) or not text.strip():
            raise PairSourceError("give the edit instruction (the concept text)")
        source_id = _check_id(id if id is not None else f"edit-{_slug(text)[:40]}")
        return cls(path.resolve(), source_id, text, **kw)

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.text, *self.paraphrases)

    def pairs(
        self, n: int, size: int = 64, seed: int = 0, split: str = "collect"
    ) -> tuple[Tensor, Tensor]:
        inputs = random_crops(PAIR_SPLITS[split], n, size, seed)  # (n, 3, size, size)
        pipe = _pipeline(str(self.model_path), self.device)
        out = []
        for k in range(0, n, self.batch_size):
            batch = inputs[k : k + self.batch_size]
            g = torch.Generator(self.device).manual_seed(int(seed) * 1_000 + k)
            with torch.no_grad():
                images = pipe(
                    prompt=[self.text] * len(batch),
                    image=batch.to(self.device),
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    image_guidance_scale=self.image_guidance_scale,
                    generator=g,
                    output_type="pt",
                ).images  # (b, 3, H', W') in [0, 1]
            if images.shape[-2:] != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
            out.append(images.float().cpu())
        return inputs, torch.cat(out).clamp_(0, 1)

    def fingerprint(self) -> str:
        h = hashlib.sha256(
            json.dumps(
                [self.text, self.steps, self.guidance_scale, self.image_guidance_scale]
            ).encode()
        )
        for f in sorted(self.model_path.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(self.model_path)).encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "kind": "diffusion-edit",
            "model_path": str(self.model_path),
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": self.image_guidance_scale,
        }
