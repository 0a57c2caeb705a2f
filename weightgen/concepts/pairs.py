"""Paired training data for a concept: random photo crops and their exact edited targets."""

from __future__ import annotations

import contextlib
import os
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from weightgen.concepts.catalogue import Concept, get_concept
from weightgen.concepts.edits import apply_program
from weightgen.concepts.images import COLLECT_PHOTOS, EVAL_PHOTOS, random_crops

__all__ = ["EVAL_SEED_OFFSET", "PAIR_SPLITS", "make_pairs", "save_concept_grid"]

PAIR_SPLITS = {"collect": COLLECT_PHOTOS, "eval": EVAL_PHOTOS}
# a job's evaluation crops use seed + this, so they never share a seed with its training crops
EVAL_SEED_OFFSET = 1_000_003


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Intra-op threads on (32, 3, 64, 64) tensors cost far more than they save when cores are
    shared (measured: median 408 ms vs 11 ms per concept on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def make_pairs(
    concept: Concept | str,
    n: int,
    size: int = 64,
    seed: int = 0,
    split: str = "collect",
) -> tuple[Tensor, Tensor]:
    """(inputs, targets), both (n, 3, size, size) float32 in [0, 1]; targets =
    apply_program(concept.program, inputs). Inputs depend only on (n, size, seed, split), so every
    concept sees the same crops for the same arguments; bit-identical across calls. Runs with one
    intra-op thread (restored afterwards)."""
    if split not in PAIR_SPLITS:
        raise ValueError(f"unknown pair split {split!r}; use 'collect' or 'eval'")
    if isinstance(concept, str):
        concept = get_concept(concept)
    with _one_thread(), torch.no_grad():
        inputs = random_crops(PAIR_SPLITS[split], n, size, seed)
        targets = apply_program(concept.program, inputs)
    return inputs, targets.contiguous()


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # (n, H, W, 3)


def save_concept_grid(
    concept: Concept | str,
    path: str | os.PathLike,
    n: int = 6,
    size: int = 96,
    seed: int = 0,
    split: str = "collect",
) -> None:
    """PNG: title (id, family, text), a row of n inputs above a row of their edited targets.
    Written atomically (temporary file in the same folder, then renamed)."""
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(concept, str):
        concept = get_concept(concept)
    inputs, targets = make_pairs(concept, n, size=size, seed=seed, split=split)
    pad, font_size = 4, 13
    width = n * size + (n + 1) * pad
    lines = textwrap.wrap(
        f"{concept.id} [{concept.family}, {concept.split}]: {concept.text}",
        width=max(20, width // 7),
    )
    header = pad + len(lines) * (font_size + 3)
    canvas = Image.new("RGB", (width, header + 2 * size + 3 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:
        font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (font_size + 3)), line, fill="black", font=font)
    for row, batch in enumerate((inputs, targets)):
        for j, img in enumerate(_to_uint8(batch).numpy()):
            xy = (pad + j * (size + pad), header + pad + row * (size + pad))
            canvas.paste(Image.fromarray(img), xy)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            canvas.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
