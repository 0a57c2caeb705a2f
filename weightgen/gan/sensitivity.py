"""How much each LoRA value moves the edited image: the diagonal Fisher of the base + LoRA output.

For a LoRA value w, sensitivity(w) = E_{concept, image, v} [(d <v, G(x; w)> / dw)^2] with v a
standard Gaussian over the output pixels, i.e. the expected squared change of the output per unit
change of w. The generator's block loss is measured in normalised units (w = mean + std * z), so an
error dz costs about std^2 * sensitivity * dz^2 in output space: `loss_weights` turns that into
per-value weights of the x0 loss (tempered by a square root, see there).

Why: the values are far from equal. On runs/v3 (tiny preset, 395 LoRAs, 19,888 values; 60 of
them measured) std^2 * sensitivity, scaled to mean 1, is 520 on average over the 24 values of
head.lora_B, 52 on stem.lora_B, 26 on up2.lora_B and below 0.1 on most attention values; the
median value is 0.009. A per-value normalised MSE spends its capacity on values that hardly
change the image.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor

from weightgen.config import Preset

# clamp of the weights (mean 1) before renormalising: no value leaves the loss, none takes it over
WEIGHT_CLAMP = (0.01, 100.0)


def lora_sensitivity(
    base_state: dict[str, Tensor],
    preset: Preset,
    samples: Iterable[tuple[dict[str, Tensor], Tensor, Tensor, Tensor]],
    *,
    probes: int = 4,
    seed: int = 0,
) -> dict[str, Tensor]:
    """samples: (lora state dict, text tokens (L, Dt), mask (L,), images (n, 3, H, W) in [0, 1]).
    Returns {LoRA tensor name: mean squared output gradient, same shape}, float32 on CPU."""
    from weightgen.gan.lora import load_lora, lora_param_names
    from weightgen.gan.train import build_concept_model, to_model

    g = build_concept_model("lora", preset.gan, preset.lora, base_state).eval()
    named = dict(g.named_parameters())
    params = {k: named[n] for k, n in lora_param_names(g).items()}  # state-dict names
    for p in params.values():
        p.requires_grad_(True)
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for lora, tokens, mask, images in samples:
        load_lora(g, lora)
        n = images.shape[0]
        out = g(to_model(images), tokens[None].expand(n, -1, -1), mask[None].expand(n, -1))
        for r in range(probes):
            v = torch.randn(out.shape, generator=gen)  # (n, 3, H, W)
            grads = torch.autograd.grad(
                (out * v).sum(), list(params.values()), retain_graph=r < probes - 1
            )
            for k, gr in zip(params, grads):
                acc[k] += gr.detach() ** 2
        count += probes
    if count == 0:
        raise ValueError("lora_sensitivity: no samples given")
    return {k: (v / count).float().cpu() for k, v in acc.items()}


def loss_weights(sensitivity_blocks: Tensor, std: Tensor, valid: Tensor) -> Tensor:
    """(N, S) sensitivity in block layout, (N, S) per-value std, (N, S) bool valid ->
    (N, S) x0-loss weights: sqrt(std^2 * sensitivity) scaled to mean 1 over valid values,
    clamped to WEIGHT_CLAMP and scaled to mean 1 again; 0 on padding.

    The square root tempers the 10^5 spread of std^2 * sensitivity. Measured on runs/v3 (1,500
    more steps from a 12k-step generator, held-out step-0 PSNR over 57 concepts, mean / median):
    uniform 18.0 / 17.4 dB, std^2 * sensitivity (floored at 1e-3) 19.0 / 18.1, the same clamped
    to 0.02-50 19.2 / 18.6, its square root 19.4 / 18.5 (beats nearest on 39%, uniform 23%)."""
    valid = valid.to(torch.bool)
    w = sensitivity_blocks.double() * std.double() ** 2 * valid
    if not bool(torch.isfinite(w).all()) or float(w[valid].sum()) <= 0 or bool((w < 0).any()):
        raise ValueError("sensitivity weights must be finite, non-negative and not all zero")
    w = w.sqrt()
    w = w / w[valid].mean()
    w = w.clamp(*WEIGHT_CLAMP) * valid
    return (w / w[valid].mean()).float()


SENSITIVITY_FILE = "sensitivity.safetensors"


def dataset_sensitivity(
    base_dir: str,
    data_uri: str,
    *,
    samples: int = 60,
    images: int = 8,
    probes: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Measure `lora_sensitivity` over `samples` LoRAs of a data set (evenly spaced over it, each
    with its own text, on `images` crops of the collection photos) with the base it was collected
    on, and write it into the data set as sensitivity.safetensors ((N, S) in block layout,
    metadata layout_hash / samples / probes). Returns a summary."""
    from safetensors.torch import save
    from tqdm.auto import tqdm

    from weightgen.blocks import LayoutMismatchError
    from weightgen.concepts.images import random_crops
    from weightgen.concepts.pairs import PAIR_SPLITS
    from weightgen.data import open_storage
    from weightgen.gan.base import load_base
    from weightgen.gan.lora import lora_state_dict
    from weightgen.gan.train import build_concept_model
    from weightgen.train.data import load_train_data

    if samples < 1 or images < 1 or probes < 1:
        raise ValueError("samples, images and probes must be >= 1")
    base_state, preset = load_base(base_dir)
    data = load_train_data(data_uri)
    layout, stats = data.layout, data.stats
    fresh = lora_state_dict(build_concept_model("lora", preset.gan, preset.lora, base_state))
    try:
        layout.check_state_dict(fresh)
    except LayoutMismatchError as e:
        raise LayoutMismatchError(
            f"the base {base_dir} does not fit the data set {data_uri} ({e}); "
            "pass the base the data set was collected on"
        ) from None
    t0 = time.perf_counter()
    M = data.num_samples
    pick = sorted({(i * M) // min(samples, M) for i in range(min(samples, M))})
    size = preset.gan.image_size
    x = random_crops(PAIR_SPLITS["collect"], images, size, seed)  # (images, 3, size, size)

    def rows():
        for i in tqdm(pick, desc="sensitivity", unit="LoRA", disable=not progress):
            raw = data.x0[i] * stats.std + stats.mean  # (N, S) de-normalised
            yield layout.from_blocks(raw * layout.valid_mask()), data.tokens[i], data.mask[i], x

    sens = lora_sensitivity(base_state, preset, rows(), probes=probes, seed=seed)
    blocks = layout.to_blocks(sens).contiguous()  # (N, S)
    seconds = time.perf_counter() - t0
    meta = {"layout_hash": layout.hash, "samples": str(len(pick)), "probes": str(probes)}
    buf = save({"sensitivity": blocks}, metadata={**meta, "seconds": f"{seconds:.3f}"})
    open_storage(data_uri).write_bytes(SENSITIVITY_FILE, bytes(buf))
    w = loss_weights(blocks, stats.std, layout.valid_mask())
    per_tensor = {k: float(v.mean()) for k, v in layout.from_blocks(w).items()}
    top = sorted(per_tensor.items(), key=lambda kv: -kv[1])[:5]
    return {
        "samples": len(pick),
        "probes": probes,
        "seconds": seconds,
        "file": SENSITIVITY_FILE,
        "top_weights": top,
    }


def read_sensitivity(raw: bytes) -> tuple[Tensor | None, dict[str, str]]:
    """The bytes of a sensitivity.safetensors -> (its "sensitivity" tensor or None, metadata).
    The metadata comes from the header itself (u64 length, then JSON): no temporary file."""
    import json
    import struct

    from safetensors.torch import load

    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    return load(raw).get("sensitivity"), meta


def sensitivity_seconds(data_uri: str) -> float | None:
    """The measuring time recorded in a data set's sensitivity.safetensors (None: no file or
    no record)."""
    from weightgen.data import open_storage

    st = open_storage(data_uri)
    if not st.exists(SENSITIVITY_FILE):
        return None
    _, meta = read_sensitivity(st.read_bytes(SENSITIVITY_FILE))
    return float(meta["seconds"]) if "seconds" in meta else None
