"""Noise schedule (diffusers DDPM) and the training loss over normalised weight blocks.

The model predicts clean blocks x0 (`prediction_type="sample"`). Samples are never clipped:
normalised weights are z-scores and legitimately exceed 1. Padding entries (False in `valid`)
are zero in the model's input and excluded from the loss, so whatever a data set holds there
cannot change training.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"  # cosine (Nichol & Dhariwal): no near-zero-SNR waste at t≈0


def make_train_scheduler(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_schedule: str = BETA_SCHEDULE
) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="sample",
        clip_sample=False,
    )


def make_ddim_scheduler(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_schedule: str = BETA_SCHEDULE
) -> DDIMScheduler:
    """DDIM for multi-step sampling; "trailing" spacing so the first step is t = T-1 (pure noise)."""
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="sample",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def _randn(shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Gaussian noise drawn on the generator's device (reproducible across devices), then moved."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def diffusion_loss(
    model: torch.nn.Module,
    x0: Tensor,
    valid: Tensor,
    text_pooled: Tensor,
    text_tokens: Tensor,
    text_mask: Tensor,
    *,
    scheduler: DDPMScheduler | None = None,
    generator: torch.Generator | None = None,
    cond_drop_prob: float | None = None,
    last_t_frac: float = 0.0,
    weight: Tensor | None = None,
    pair_drop_prob: float = 0.0,
    **model_kwargs,
) -> Tensor:
    """x0 (B, N, S) normalised clean blocks, valid (N, S) bool -> scalar MSE over valid entries.

    `weight` (N, S), mean 1 over valid entries and 0 on padding, weighs each value's squared
    error (e.g. weightgen.data.sensitivity.loss_weights); None: every valid value counts once.

    t ~ U{0..T-1}, noise ~ N(0, I), text dropped with probability `cond_drop_prob` (default: the
    model's config value), all drawn from `generator` (so a step's randomness is reproducible).
    `last_t_frac` of the samples (in expectation) get t = T-1 instead: the pure-noise input that
    single-step sampling starts from, where only the text (and index) can tell the weights apart.
    `model_kwargs` go to the model as they are (a retrieval-augmented model's neighbours, a
    pair-conditioned model's features, dropped with probability `pair_drop_prob`).
    """
    scheduler = scheduler or make_train_scheduler()
    B, dev = x0.shape[0], x0.device
    gdev = generator.device if generator is not None else dev
    if cond_drop_prob is None:
        base = getattr(model, "module", model)  # a DeepSpeed engine wraps the BlockDiT
        cond_drop_prob = float(base.config.cond_drop_prob)
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (B,), generator=generator, device=gdev).to(dev)  # (B,)
    noise = _randn(x0.shape, generator, dev)  # (B, N, S)
    drop = (torch.rand(B, generator=generator, device=gdev) < cond_drop_prob).to(dev)  # (B,)
    if last_t_frac > 0:
        last = (torch.rand(B, generator=generator, device=gdev) < last_t_frac).to(dev)  # (B,)
        t = torch.where(last, torch.full_like(t, T - 1), t)

    if "pair_features" in model_kwargs and pair_drop_prob > 0:  # drawn after the draws above
        away = torch.rand(B, generator=generator, device=gdev) < pair_drop_prob  # (B,)
        model_kwargs["drop_pairs"] = away.to(dev)
    v = valid.to(device=dev, dtype=torch.float32)  # (N, S)
    x0 = x0.to(torch.float32) * v  # (B, N, S) padding -> 0
    xt = scheduler.add_noise(x0, noise, t) * v  # (B, N, S)
    pred = model(xt, t, text_pooled, text_tokens, text_mask, drop_text=drop, **model_kwargs)
    w = v if weight is None else weight.to(device=dev, dtype=torch.float32) * v  # (N, S)
    err = (pred.to(torch.float32) - x0) ** 2 * w  # (B, N, S)
    return err.sum() / (v.sum() * B)
