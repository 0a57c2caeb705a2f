"""The data set's sensitivity file and the x0-loss weights made from it.

`sensitivity.safetensors` (written by `weightgen sensitivity`, measured by
`weightgen.gan.sensitivity`) holds one tensor "sensitivity", (N, S) in the data set's block
layout: the expected squared change of the generated image per unit change of each LoRA value.
Metadata: layout_hash, samples, probes, seconds (the measuring time).
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load, save
from torch import Tensor

from weightgen.data.uris import open_storage

SENSITIVITY_FILE = "sensitivity.safetensors"
# clamp of the weights (mean 1) before renormalising: no value leaves the loss, none takes it over
WEIGHT_CLAMP = (0.01, 100.0)


def write_sensitivity(data_uri: str, blocks: Tensor, meta: dict[str, str]) -> None:
    """Write (N, S) `blocks` and string metadata into the data set at `data_uri`."""
    buf = save({"sensitivity": blocks.contiguous()}, metadata=meta)
    open_storage(data_uri).write_bytes(SENSITIVITY_FILE, bytes(buf))


def loss_weights(sensitivity_blocks: Tensor, std: Tensor, valid: Tensor) -> Tensor:
    """(N, S) sensitivity in block layout, (N, S) per-value std, (N, S) bool valid ->
    (N, S) x0-loss weights: sqrt(std^2 * sensitivity) scaled to mean 1 over valid values,
    clamped to WEIGHT_CLAMP and scaled to mean 1 again; 0 on padding.

    The square root tempers the 10^5 spread of std^2 * sensitivity (it beat the raw, the clamped
    and the uniform weighting in step-0 PSNR; docs/results.md)."""
    valid = valid.to(torch.bool)
    w = sensitivity_blocks.double() * std.double() ** 2 * valid
    if not bool(torch.isfinite(w).all()) or float(w[valid].sum()) <= 0 or bool((w < 0).any()):
        raise ValueError("sensitivity weights must be finite, non-negative and not all zero")
    w = w.sqrt()
    w = w / w[valid].mean()
    w = w.clamp(*WEIGHT_CLAMP) * valid
    return (w / w[valid].mean()).float()


def read_sensitivity(raw: bytes) -> tuple[Tensor | None, dict[str, str]]:
    """The bytes of a sensitivity.safetensors -> (its "sensitivity" tensor or None, metadata).
    The metadata comes from the header itself (u64 length, then JSON): no temporary file."""
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    return load(raw).get("sensitivity"), meta


def sensitivity_seconds(data_uri: str) -> float | None:
    """The measuring time recorded in a data set's sensitivity.safetensors (None: no file or
    no record)."""
    st = open_storage(data_uri)
    if not st.exists(SENSITIVITY_FILE):
        return None
    _, meta = read_sensitivity(st.read_bytes(SENSITIVITY_FILE))
    return float(meta["seconds"]) if "seconds" in meta else None
