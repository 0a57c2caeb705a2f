"""pix2pix-style training: one concept's fine-tune (`train_concept`) and the base pre-training.

`train_concept` is pure: tensors in, LoRA state dict + quality curve out (no Ray, no storage).
Losses: gan_weight * BCE(D(x, G(x)), real) + lambda_l1 * |G(x) - y|_1 (pix2pix); PatchGAN D.
Quality: PSNR and SSIM (torchmetrics) of G on the concept's evaluation images against their exact
edited targets, at regular steps, with the training wall time (evaluation time excluded).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from weightgen.config import BaseTrainConfig, ConceptTrainConfig, GANConfig, LoRAConfig
from weightgen.gan.lora import attach_lora, load_lora, lora_state_dict, lora_trainable
from weightgen.gan.models import E2GANGenerator, PatchDiscriminator, UNetGenerator

METHODS = ("lora", "scratch")


@dataclass
class CurvePoint:
    step: int
    time_s: float  # training wall time up to this step (evaluation excluded)
    psnr: float
    ssim: float


@dataclass
class ConceptResult:
    lora: dict[str, torch.Tensor] | None  # None for method="scratch"
    curve: list[CurvePoint]
    steps: int
    train_seconds: float
    trainable_params: int
    extra: dict = field(default_factory=dict)

    @property
    def psnr_step0(self) -> float:
        return self.curve[0].psnr

    @property
    def ssim_step0(self) -> float:
        return self.curve[0].ssim

    @property
    def psnr_final(self) -> float:
        return self.curve[-1].psnr

    @property
    def ssim_final(self) -> float:
        return self.curve[-1].ssim

    def metrics(self) -> dict:
        return {
            "psnr_step0": self.psnr_step0,
            "ssim_step0": self.ssim_step0,
            "psnr_final": self.psnr_final,
            "ssim_final": self.ssim_final,
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "curve": [vars(p) for p in self.curve],
        }


def to_model(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1  # [0,1] -> [-1,1]


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


@torch.no_grad()
def evaluate(generator, x, y, tokens, mask, batch: int = 16) -> tuple[float, float]:
    """PSNR (dB) and SSIM of generator(x) against y; x, y (B,3,H,W) in [0,1]."""
    was = generator.training
    generator.eval()
    outs = []
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        n = xb.shape[0]
        outs.append(
            from_model(generator(to_model(xb), tokens.expand(n, -1, -1), mask.expand(n, -1)))
        )
    generator.train(was)
    pred = torch.cat(outs)
    psnr = peak_signal_noise_ratio(pred, y, data_range=1.0).item()
    ssim = structural_similarity_index_measure(pred, y, data_range=1.0).item()
    return psnr, ssim


def build_concept_model(
    method: str,
    gan_cfg: GANConfig,
    lora_cfg: LoRAConfig,
    base_state: dict[str, torch.Tensor] | None,
    init_lora: dict[str, torch.Tensor] | None = None,
):
    """The generator a concept trains: base + LoRA (method "lora") or a fresh pix2pix U-Net."""
    if method == "scratch":
        return UNetGenerator(gan_cfg.image_size, gan_cfg.unet_ngf)
    if method != "lora":
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if base_state is None:
        raise ValueError("method 'lora' needs the base generator's state dict")
    g = E2GANGenerator(gan_cfg)
    g.load_state_dict(base_state)
    g = attach_lora(g, lora_cfg)
    if init_lora is not None:
        load_lora(g, init_lora)
    return g


def _gan_step(g, d, opt_g, opt_d, x, y, tokens, mask, lambda_l1, gan_weight):
    fake = g(x, tokens, mask)
    if gan_weight > 0:
        # backward_D: real pairs -> 1, fake pairs -> 0
        opt_d.zero_grad(set_to_none=True)
        real_logits = d(x, y)
        fake_logits = d(x, fake.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
        loss_d.backward()
        opt_d.step()
    # backward_G: fool D, stay close to the target
    opt_g.zero_grad(set_to_none=True)
    loss_l1 = (fake - y).abs().mean()
    loss = lambda_l1 * loss_l1
    if gan_weight > 0:
        logits = d(x, fake)
        loss = loss + gan_weight * F.binary_cross_entropy_with_logits(
            logits, torch.ones_like(logits)
        )
    loss.backward()
    opt_g.step()
    return loss_l1.item()


def train_concept(
    *,
    method: str = "lora",
    gan_cfg: GANConfig,
    lora_cfg: LoRAConfig,
    cfg: ConceptTrainConfig,
    base_state: dict[str, torch.Tensor] | None,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    train_pairs: tuple[torch.Tensor, torch.Tensor],
    eval_pairs: tuple[torch.Tensor, torch.Tensor],
    init_lora: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    device: str | torch.device = "cpu",
    on_eval: Callable[[CurvePoint], None] | None = None,
    eval_at: Sequence[int] | None = None,
    stop: Callable[[list[CurvePoint]], bool] | None = None,
    preview: torch.Tensor | None = None,
) -> ConceptResult:
    """Fine-tune one concept. tokens (L, Dt) and mask (L,) are the concept text's token embeddings;
    pairs are ((n,3,H,W), (n,3,H,W)) in [0,1]. Deterministic for a given seed on CPU.

    Quality is measured at step 0 and then every `cfg.eval_every` steps, or at the steps in
    `eval_at` when given; the last step is always measured. `stop(curve)` is asked after each
    measurement and ends training early when it returns True (e.g. a plateau rule). `preview`
    images (k,3,H,W) in [0,1] are edited at the start and the end: extra["preview"]."""
    steps = cfg.steps if steps is None else steps
    at = None if eval_at is None else {s for s in eval_at if 0 < s <= steps}
    lr = cfg.lr if lr is None else lr
    torch.manual_seed(seed)
    device = torch.device(device)
    g = build_concept_model(method, gan_cfg, lora_cfg, base_state, init_lora).to(device)
    params = lora_trainable(g) if method == "lora" else list(g.parameters())
    d = PatchDiscriminator(gan_cfg.disc_ndf, gan_cfg.disc_layers).to(device)
    opt_g = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))

    tok = tokens.to(device)[None]  # (1, L, Dt)
    msk = mask.to(device)[None]  # (1, L)
    xs, ys = (t.to(device) for t in train_pairs)
    ex, ey = (t.to(device) for t in eval_pairs)
    gen = torch.Generator().manual_seed(seed)

    def record(step, elapsed):
        psnr, ssim = evaluate(g, ex, ey, tok, msk)
        point = CurvePoint(step, elapsed, psnr, ssim)
        curve.append(point)
        if on_eval is not None:
            on_eval(point)

    def render():
        with torch.no_grad():
            was = g.training
            g.eval()
            k = preview.shape[0]
            y = from_model(
                g(to_model(preview.to(device)), tok.expand(k, -1, -1), msk.expand(k, -1))
            )
            g.train(was)
            return y.cpu()

    curve: list[CurvePoint] = []
    start = render() if preview is not None and len(preview) else None
    record(0, 0.0)
    elapsed = 0.0
    g.train()
    b = min(cfg.batch_size, xs.shape[0])
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        idx = torch.randint(0, xs.shape[0], (b,), generator=gen)
        x, y = to_model(xs[idx]), to_model(ys[idx])
        _gan_step(
            g,
            d,
            opt_g,
            opt_d,
            x,
            y,
            tok.expand(b, -1, -1),
            msk.expand(b, -1),
            cfg.lambda_l1,
            cfg.gan_weight,
        )
        elapsed += time.perf_counter() - t0
        due = (step % cfg.eval_every == 0) if at is None else (step in at)
        if due or step == steps:
            record(step, elapsed)
            if stop is not None and step < steps and stop(curve):
                break
    lora = lora_state_dict(g) if method == "lora" else None
    extra = {} if start is None else {"preview": {"start": start, "end": render()}}
    return ConceptResult(
        lora=lora,
        curve=curve,
        steps=curve[-1].step,
        train_seconds=elapsed,
        trainable_params=sum(p.numel() for p in params),
        extra=extra,
    )


def pretrain_base(
    *,
    gan_cfg: GANConfig,
    cfg: BaseTrainConfig,
    tokens: torch.Tensor,
    masks: torch.Tensor,
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    seed: int = 0,
    steps: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train the whole E2GAN base on a mixture of base concepts.
    tokens (C, L, Dt), masks (C, L), pairs[c] = (x (n,3,H,W), y (n,3,H,W)) in [0,1].
    Returns (state dict, L1 loss per step)."""
    steps = cfg.steps if steps is None else steps
    torch.manual_seed(seed)
    device = torch.device(device)
    g = E2GANGenerator(gan_cfg).to(device)
    d = PatchDiscriminator(gan_cfg.disc_ndf, gan_cfg.disc_layers).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr * 0.1, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt_g, T_max=max(steps, 1), eta_min=cfg.lr * 0.05
    )
    xs = torch.stack([p[0] for p in pairs]).to(device)  # (C, n, 3, H, W)
    ys = torch.stack([p[1] for p in pairs]).to(device)
    tokens, masks = tokens.to(device), masks.to(device)
    C, n = xs.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(1, steps + 1):
        ci = torch.randint(0, C, (cfg.batch_size,), generator=gen)
        pi = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x, y = to_model(xs[ci, pi]), to_model(ys[ci, pi])
        loss = _gan_step(
            g, d, opt_g, opt_d, x, y, tokens[ci], masks[ci], cfg.lambda_l1, cfg.gan_weight
        )
        sched.step()
        losses.append(loss)
        if progress is not None:
            progress(step, loss)
    return copy.deepcopy({k: v.detach().cpu() for k, v in g.state_dict().items()}), losses
