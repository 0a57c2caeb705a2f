"""FID (torchmetrics) of each method's final outputs against the exact targets, pooled over the
fine-tuned concepts' evaluation images. Only with a local Inception weights file: nothing is
downloaded. torchmetrics' Inception needs the `torch-fidelity` package (install it with torch
pinned, e.g. `pip install torch-fidelity "torch==2.13.0"`, or pip replaces torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from weightgen.errors import WeightgenError


def fid_metric(weights: str | Path):
    path = Path(weights)
    if not path.is_file():
        raise WeightgenError(f"--fid-weights {path}: no such file (a local Inception weights file)")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise WeightgenError(
            "--fid-weights needs the torch-fidelity package for torchmetrics' Inception: "
            'pip install torch-fidelity "torch==2.13.0"'
        ) from None
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=str(path)
    )


def pooled_fid(
    weights: str | Path, outputs: Sequence[dict], methods: Sequence[str]
) -> dict[str, float]:
    """outputs[i] = {"target": (n,3,H,W), method: {"end": (n,3,H,W)}} in [0,1], one per concept."""
    real = torch.cat([o["target"] for o in outputs])
    result = {}
    for m in methods:
        metric = fid_metric(weights)
        metric.update(real, real=True)
        metric.update(torch.cat([o[m]["end"] for o in outputs]).clamp(0, 1), real=False)
        result[m] = float(metric.compute())
    return result
