"""Generators and discriminator.

- `E2GANGenerator`: the E2GAN-like base (Gong et al., ICML 2024): downsample stem, ResNet blocks, one
  transformer block with self-attention and cross-attention to the concept's text tokens, upsample
  head. Additive skips (stem -> last upsampling, down1 -> first upsampling) keep per-pixel detail,
  which colour edits need. LoRA goes on the stem/downsampling, the transformer block and the upsampling/head.
- `UNetGenerator` + `PatchDiscriminator`: the pix2pix baseline (Isola et al., 2017), trained from
  scratch per concept.

Images are (B, 3, H, W) in [-1, 1] inside the models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weightgen.config import GANConfig

# What a saved base's weights mean: bumped whenever E2GANGenerator computes something else from
# the same state dict ("e2gan-tanh": tanh output; the earlier linear-residual bases have none).
E2GAN_ARCH = "e2gan-tanh"


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm1 = _norm(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = _norm(ch)

    def forward(self, x):
        h = F.silu(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(h))


class TextTransformerBlock(nn.Module):
    """Pre-norm block: self-attention over pixels, cross-attention to text tokens, MLP."""

    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.self_q = nn.Linear(dim, dim)
        self.self_k = nn.Linear(dim, dim)
        self.self_v = nn.Linear(dim, dim)
        self.self_o = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_k = nn.Linear(text_dim, dim)
        self.cross_v = nn.Linear(text_dim, dim)
        self.cross_o = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _attend(self, q, k, v, mask=None):
        B, T, D = q.shape
        h = self.heads
        q = q.view(B, T, h, D // h).transpose(1, 2)  # (B, h, T, d)
        k = k.view(B, k.shape[1], h, D // h).transpose(1, 2)  # (B, h, L, d)
        v = v.view(B, v.shape[1], h, D // h).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return o.transpose(1, 2).reshape(B, T, D)

    def forward(self, x, text, text_mask):
        # x: (B, T, D) pixels as tokens; text: (B, L, Dt); text_mask: (B, L) bool
        h = self.norm1(x)
        x = x + self.self_o(self._attend(self.self_q(h), self.self_k(h), self.self_v(h)))
        h = self.norm2(x)
        mask = text_mask.clone()
        mask[:, 0] = True  # never a fully masked row
        x = x + self.cross_o(
            self._attend(self.cross_q(h), self.cross_k(text), self.cross_v(text), mask)
        )
        return x + self.mlp(self.norm3(x))


class E2GANGenerator(nn.Module):
    """(B,3,H,W) image in [-1, 1] + (B,L,Dt) text tokens -> (B,3,H,W) edited image in (-1, 1)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        # No normalisation at full and half resolution: a group norm there removes each image's
        # mean colour, which colour edits must see. Output tanh(head), no residual on the input
        # (a residual `x + head` learnt colour maps, emboss and compositions markedly worse).
        self.stem = nn.Conv2d(3, c, 7, padding=3)
        self.down1 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1)
        self.down2_norm = _norm(4 * c)
        self.res = nn.Sequential(*[ResBlock(4 * c) for _ in range(cfg.n_res_blocks)])
        self.pos = nn.Parameter(torch.zeros(1, (cfg.image_size // 4) ** 2, 4 * c))
        nn.init.normal_(self.pos, std=0.02)
        self.attn = TextTransformerBlock(4 * c, cfg.text_dim, cfg.heads)
        self.up1 = nn.Conv2d(4 * c, 2 * c, 3, padding=1)
        self.up1_norm = _norm(2 * c)
        self.up2 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.head = nn.Conv2d(c, 3, 7, padding=3)

    def forward(self, x, text, text_mask):
        s0 = F.silu(self.stem(x))  # (B, c, H, W)
        s1 = F.silu(self.down1(s0))  # (B, 2c, H/2, W/2)
        h = F.silu(self.down2_norm(self.down2(s1)))  # (B, 4c, H/4, W/4)
        h = self.res(h)
        B, C, H, W = h.shape
        t = h.flatten(2).transpose(1, 2) + self.pos[:, : H * W]  # (B, HW/16, 4c)
        t = self.attn(t, text, text_mask)
        h = t.transpose(1, 2).reshape(B, C, H, W)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = F.silu(self.up1_norm(self.up1(h))) + s1  # (B, 2c, H/2, W/2); additive skip
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = F.silu(self.up2(h)) + s0  # (B, c, H, W); keeps per-pixel detail
        return torch.tanh(self.head(h))


class _UNetLevel(nn.Module):
    def __init__(self, outer: int, inner: int, sub: nn.Module | None, outermost=False, in_ch=None):
        super().__init__()
        in_ch = outer if in_ch is None else in_ch
        self.down = nn.Conv2d(in_ch, inner, 4, stride=2, padding=1)
        self.down_norm = nn.Identity() if (outermost or sub is None) else _norm(inner)
        self.sub = sub
        up_in = inner if sub is None else inner * 2
        self.up = nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1)
        self.up_norm = nn.Identity() if outermost else _norm(outer)
        self.outermost = outermost

    def forward(self, x):
        h = self.down_norm(self.down(x if self.outermost else F.leaky_relu(x, 0.2)))
        if self.sub is not None:
            h = self.sub(h)
        h = self.up_norm(self.up(F.relu(h)))
        return h if self.outermost else torch.cat([x, h], dim=1)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: log2(H) levels down to 1x1 with skip connections; tanh output."""

    def __init__(self, image_size: int = 64, ngf: int = 16):
        super().__init__()
        levels = int(round(torch.log2(torch.tensor(float(image_size))).item()))
        mults = [min(2**i, 8) for i in range(levels)]  # ngf multipliers per level, outer -> inner
        block = None
        for i in range(levels - 1, 0, -1):
            block = _UNetLevel(ngf * mults[i - 1], ngf * mults[i], block)
        self.net = _UNetLevel(3, ngf, block, outermost=True, in_ch=3)

    def forward(self, x, text=None, text_mask=None):
        return torch.tanh(self.net(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN on (input, output) pairs: (B,6,H,W) -> (B,1,h,w) logits."""

    def __init__(self, ndf: int = 16, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(6, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = ndf
        for i in range(1, n_layers + 1):
            nxt = ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(ch, nxt, 4, stride=stride, padding=1),
                _norm(nxt),
                nn.LeakyReLU(0.2),
            ]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, a, b):
        return self.net(torch.cat([a, b], dim=1))
