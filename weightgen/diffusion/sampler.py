"""Sampling weight blocks from text, and loading an exported generator.

A generator run folder (written by `weightgen.train.train_generator`) holds:
  model/              BlockDiT.save_pretrained (config.json + safetensors), EMA weights
  layout.json         the BlockLayout the blocks follow (with its hash)
  stats.safetensors   per-block mean/std the model's blocks are normalised with
  generator.json      text model, data set URI, layout hash, schedule, train config, final loss
  neighbors.safetensors  the retrieval bank (weightgen.diffusion.neighbors), for a model
                      conditioned on retrieved neighbours only
generator.json is written last: a folder without it is not a (complete) generator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from weightgen.blocks import BlockLayout, BlockStats, normalize, reassemble
from weightgen.diffusion.model import BlockDiT
from weightgen.diffusion.neighbors import BANK_FILE, NeighborBank
from weightgen.diffusion.schedule import (
    BETA_SCHEDULE,
    NUM_TRAIN_TIMESTEPS,
    _randn,
    make_ddim_scheduler,
)
from weightgen.errors import WeightgenError

GENERATOR_JSON = "generator.json"
MODEL_DIR = "model"
LAYOUT_JSON = "layout.json"
STATS_FILE = "stats.safetensors"


class GeneratorError(WeightgenError):
    """A generator folder is missing, incomplete, or does not match what it is used with."""


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _predict(model, x, t, pooled, tokens, mask, guidance: float, nb: dict) -> Tensor:
    """Guided x0 prediction: uncond + g * (cond - uncond); g == 1 skips the null pass. `nb`: a
    retrieval-augmented model's neighbours (kept in the null pass: only the text is dropped)."""
    B = x.shape[0]
    if guidance == 1.0:
        return model(x, t, pooled, tokens, mask, drop_text=torch.zeros(B, dtype=torch.bool), **nb)
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])  # (2B,)
    out = model(
        torch.cat([x, x]),
        torch.cat([t, t]),
        torch.cat([pooled, pooled]),
        torch.cat([tokens, tokens]),
        torch.cat([mask, mask]),
        drop_text=drop.to(x.device),
        **{k: torch.cat([v, v]) for k, v in nb.items()},
    )  # (2B, N, S)
    cond, uncond = out.float().chunk(2)
    return uncond + guidance * (cond - uncond)  # (B, N, S)


@torch.no_grad()
def sample_blocks(
    model: BlockDiT,
    text_pooled: Tensor,
    text_tokens: Tensor,
    text_mask: Tensor,
    *,
    steps: int = 1,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    valid: Tensor | None = None,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_schedule: str = BETA_SCHEDULE,
    init: Tensor | None = None,
    strength: float = 1.0,
    neighbors: Tensor | None = None,
    neighbor_sims: Tensor | None = None,
    pair_features: Tensor | None = None,
    drop_pairs: Tensor | None = None,
) -> Tensor:
    """text (B, Dt), (B, L, Dt), (B, L) -> normalised blocks (B, N, S), float32.

    `neighbors` (B, K, N, S) normalised and `neighbor_sims` (B, K): the retrieved training LoRAs
    a model with config.num_neighbors = K is conditioned on (weightgen.diffusion.neighbors).
    `pair_features` (B, F) and `drop_pairs` (B,) bool: a model with config.pair_dim = F reads
    each concept's example description (weightgen.diffusion.pairs); dropped rows and a missing
    tensor select its null description.

    steps=1: one x0 prediction from pure noise at t = T-1 (the paper's single denoising step).
    steps>1: DDIM (eta 0) over `steps` trailing timesteps. guidance>1: classifier-free guidance
    against the model's null text. `valid` (N, S) zeroes padding in every intermediate.

    `init` (B, N, S) normalised blocks, e.g. a retrieved LoRA, with `strength` in (0, 1]: the
    sample starts from `init` noised to t0 = round(strength * (T-1)) (SDEdit, Meng et al. 2022):
    x_t0 = sqrt(abar_t0) init + sqrt(1 - abar_t0) noise, then one x0 prediction at t0 (steps=1)
    or DDIM over the trailing timesteps <= t0. Without `init`, strength must be 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if init is None and strength != 1.0:
        raise ValueError("strength < 1 needs an init to start from")
    was_training = model.training
    model.eval()
    cfg = model.config
    dev = next(model.parameters()).device
    B = text_pooled.shape[0]
    pooled = text_pooled.to(dev)
    tokens = text_tokens.to(dev)
    mask = text_mask.to(dev, torch.bool)
    v = None if valid is None else valid.to(dev, torch.float32)  # (N, S)
    nb = {}
    if neighbors is not None:
        nb = {"neighbors": neighbors.to(dev), "neighbor_sims": neighbor_sims.to(dev)}
    if pair_features is not None:
        nb["pair_features"] = pair_features.to(dev)
        if drop_pairs is not None:
            nb["drop_pairs"] = drop_pairs.to(dev)

    x = _randn((B, cfg.num_blocks, cfg.block_size), generator, dev)  # (B, N, S)
    sched = make_ddim_scheduler(num_train_timesteps, beta_schedule)
    t0 = round(strength * (num_train_timesteps - 1))
    if steps > 1:
        sched.set_timesteps(steps, device=dev)
        timesteps = sched.timesteps[sched.timesteps <= t0]  # descending; t0 itself may be off-grid
        if len(timesteps) == 0:  # t0 under the whole grid: one step from t0 itself
            timesteps = torch.tensor([t0], device=dev)
        t0 = int(timesteps[0])
    if init is not None:
        if init.shape != x.shape:
            raise ValueError(f"init: expected {tuple(x.shape)} blocks, got {tuple(init.shape)}")
        abar = sched.alphas_cumprod[t0].to(dev)
        x = abar.sqrt() * init.to(dev, torch.float32) + (1 - abar).sqrt() * x  # (B, N, S)
    if v is not None:
        x = x * v
    if steps == 1:
        t = torch.full((B,), t0, device=dev, dtype=torch.long)
        x = _predict(model, x, t, pooled, tokens, mask, guidance, nb).float()  # (B, N, S)
    else:
        for t in timesteps:
            tt = t.expand(B).to(dev)  # (B,)
            x0 = _predict(model, x, tt, pooled, tokens, mask, guidance, nb).float()  # (B, N, S)
            x = sched.step(x0, t, x, eta=0.0).prev_sample  # (B, N, S)
            if v is not None:
                x = x * v
    if v is not None:
        x = x * v
    model.train(was_training)
    return x


# --------------------------------------------------------------------------------------------
# Generator bundle
# --------------------------------------------------------------------------------------------


class GeneratorBundle(NamedTuple):
    model: BlockDiT
    layout: BlockLayout
    stats: BlockStats
    meta: dict
    bank: NeighborBank | None = None  # a retrieval-augmented model's training LoRAs


def load_generator(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> GeneratorBundle:
    """run_dir (a training OUT folder) -> (model (eval, on device), layout, stats, meta)."""
    root = Path(run_dir)
    meta_path = root / GENERATOR_JSON
    if not root.is_dir():
        raise GeneratorError(
            f"no generator at {root}: folder does not exist (train one with `weightgen train "
            f"--out {root}`)"
        )
    if not meta_path.is_file():
        if (root / "checkpoints").is_dir():
            raise GeneratorError(
                f"generator at {root} has checkpoints but no export ({GENERATOR_JSON}); finish it "
                "with `weightgen train ... --resume`"
            )
        raise GeneratorError(
            f"no generator at {root}: {GENERATOR_JSON} missing (train one with `weightgen train "
            f"--out {root}`)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GeneratorError(f"generator at {root}: {GENERATOR_JSON} unreadable ({e})") from None
    for name in (LAYOUT_JSON, STATS_FILE, f"{MODEL_DIR}/config.json"):
        if not (root / name).is_file():
            raise GeneratorError(
                f"generator export at {root} is incomplete: {name} missing; re-export with "
                "`weightgen train ... --resume`"
            )
    try:
        layout = BlockLayout.from_dict(json.loads((root / LAYOUT_JSON).read_text()))
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise GeneratorError(f"generator at {root}: bad {LAYOUT_JSON} ({e})") from None
    if meta.get("layout_hash") not in (None, layout.hash):
        raise GeneratorError(
            f"generator at {root}: {GENERATOR_JSON} layout hash {meta['layout_hash'][:12]} != "
            f"{LAYOUT_JSON} {layout.hash[:12]} (mixed exports; re-export)"
        )
    try:
        stats = BlockStats.load(root / STATS_FILE, expected_layout_hash=layout.hash)
        stats.check(layout)
    except ValueError as e:
        raise GeneratorError(f"generator at {root}: {str(e).splitlines()[0]}") from None
    try:
        model = BlockDiT.from_pretrained(str(root / MODEL_DIR), use_safetensors=True)
    except (OSError, ValueError) as e:
        raise GeneratorError(
            f"generator export at {root} is incomplete: {MODEL_DIR}/ weights unreadable "
            f"({str(e).splitlines()[0][:160]})"
        ) from None
    if (model.config.num_blocks, model.config.block_size) != (
        layout.num_blocks,
        layout.block_size,
    ):
        raise GeneratorError(
            f"generator at {root}: model is for (N={model.config.num_blocks}, "
            f"S={model.config.block_size}) blocks, layout has (N={layout.num_blocks}, "
            f"S={layout.block_size})"
        )
    bank = None
    if model.config.num_neighbors:
        try:
            bank = NeighborBank.load(root / BANK_FILE)
        except (OSError, ValueError, KeyError) as e:
            raise GeneratorError(
                f"generator at {root} is conditioned on retrieved neighbours but {BANK_FILE} "
                f"is missing or unreadable ({str(e).splitlines()[0][:120]}); re-export it"
            ) from None
        if tuple(bank.blocks.shape[1:]) != (layout.num_blocks, layout.block_size):
            raise GeneratorError(f"generator at {root}: {BANK_FILE} is for another layout")
    model = model.to(device).eval()
    return GeneratorBundle(model, layout, stats.to(device), meta, bank)


def generate_lora(
    generator: str | os.PathLike | GeneratorBundle,
    texts: list[str],
    *,
    steps: int = 1,
    guidance: float = 1.0,
    seed: int = 0,
    encoder=None,
    init: list[dict[str, Tensor]] | None = None,
    strength: float = 1.0,
    pairs: list[tuple[Tensor, Tensor] | None] | None = None,
    exclude: list[str | None] | None = None,
) -> list[dict[str, Tensor]]:
    """Texts -> one LoRA state dict per text ({name: tensor} in the generator's layout, CPU fp32).

    `pairs`: per text, a few (inputs, targets) (n, 3, H, W) in [0, 1] of the concept's edit, or
    None; a generator trained with pair_features reads their description (others refuse them).
    `exclude`: per text, a concept id a retrieval-augmented generator may not retrieve.

    `encoder` (a weightgen.text.TextEncoder) overrides the text model recorded at training.
    `init`: one LoRA per text to refine instead of starting from pure noise (e.g. the training
    LoRA nearest in text), noised to `strength` (see `sample_blocks`).
    """
    bundle = generator if isinstance(generator, GeneratorBundle) else load_generator(generator)
    model, layout, stats, meta, bank = bundle
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise GeneratorError("generate_lora: no texts given (pass at least one concept text)")
    if encoder is None:
        from weightgen.text import get_encoder

        encoder = get_encoder(
            meta.get("text_model", "all-MiniLM-L6-v2"), meta.get("max_text_tokens", 16)
        )
    tb = encoder.encode(list(texts))
    pooled, tokens, mask = tb.pooled, tb.tokens, tb.mask
    if meta.get("text_tokens", True) is False:  # trained without token embeddings
        tokens, mask = pooled[:, None], torch.ones(len(texts), 1, dtype=torch.bool)
    if pooled.shape[-1] != model.config.text_dim:
        raise GeneratorError(
            f"text encoder gives {pooled.shape[-1]}-d embeddings, the generator expects "
            f"{model.config.text_dim}-d (use the text model it was trained with)"
        )
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(int(seed))
    st = stats.to(dev)
    x_init = None
    if init is not None:
        if len(init) != len(texts):
            raise GeneratorError(f"generate_lora: {len(init)} init LoRAs for {len(texts)} texts")
        flat = torch.stack([layout.flatten(sd) for sd in init]).to(dev)  # (B, P)
        x_init = normalize(flat, layout, st.mean, st.std)  # (B, N, S)
    nb = {}
    if pairs is not None:
        if not model.config.pair_dim:
            raise GeneratorError(
                "this generator was trained without pair features: it cannot read example pairs "
                "(generate from the text alone, or train with generator.pair_features=true)"
            )
        if len(pairs) != len(texts):
            raise GeneratorError(f"generate_lora: {len(pairs)} pair sets for {len(texts)} texts")
        from weightgen.diffusion.pairs import pair_features

        feats, missing = pair_features(pairs)
        nb = {"pair_features": feats.to(dev), "drop_pairs": missing.to(dev)}
    if bank is not None:  # the K training concepts nearest in text (B, K), and their blocks
        excl = None  # (B, M) bool: the bank rows each text may not retrieve
        if exclude is not None:
            ids = bank.concept_ids
            excl = torch.tensor([[cid == e for cid in ids] for e in exclude], dtype=torch.bool)
        rows, sims = bank.query(pooled, model.config.num_neighbors, excl)
        nb.update(neighbors=bank.gather(rows).to(dev), neighbor_sims=sims.to(dev))
    blocks = sample_blocks(
        model,
        pooled,
        tokens,
        mask,
        steps=steps,
        guidance=guidance,
        generator=g,
        valid=layout.valid_mask(dev),
        num_train_timesteps=meta.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS),
        beta_schedule=meta.get("beta_schedule", BETA_SCHEDULE),
        init=x_init,
        strength=strength,
        **nb,
    )  # (B, N, S) normalised
    flat = reassemble(blocks, layout, st.mean, st.std)  # (B, P) de-normalised
    sd = layout.unflatten(flat.float().cpu())  # {name: (B, *shape)}
    return [{k: v[i].clone().contiguous() for k, v in sd.items()} for i in range(len(texts))]
