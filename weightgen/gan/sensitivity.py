"""How much each LoRA value moves the edited image: the diagonal Fisher of the base + LoRA output.

For a LoRA value w, sensitivity(w) = E_{concept, image, v} [(d <v, G(x; w)> / dw)^2] with v a
standard Gaussian over the output pixels, i.e. the expected squared change of the output per unit
change of w. The generator's block loss is measured in normalised units (w = mean + std * z), so an
error dz costs about std^2 * sensitivity * dz^2 in output space: `loss_weights` turns that into
per-value weights of the x0 loss (`weightgen.data.sensitivity.loss_weights`, which also owns the
file this module writes). The values are far from equal: on the tiny preset a few output-side B
tensors carry weights in the hundreds and most attention values well below 1, so a per-value
normalised MSE would spend its capacity on values that hardly change the image.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from weightgen.blocks import LayoutMismatchError
from weightgen.concepts.images import random_crops
from weightgen.concepts.pairs import PAIR_SPLITS
from weightgen.config import Preset
from weightgen.data.sensitivity import SENSITIVITY_FILE, loss_weights, write_sensitivity
from weightgen.gan.base import load_base
from weightgen.gan.lora import load_lora, lora_param_names, lora_state_dict
from weightgen.gan.train import build_concept_model, to_model
from weightgen.train.data import load_train_data


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
    write_sensitivity(data_uri, blocks, {**meta, "seconds": f"{seconds:.3f}"})
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
