"""BlockDiT: a diffusion transformer over the N weight blocks of one LoRA, predicting clean blocks.

Tokens are the blocks: x (B, N, S) -> Linear(S -> D) + a learned block-index embedding (N, D).
Each DiT block applies adaLN-Zero modulation from c = timestep embedding + projected pooled text
(DiT, Peebles & Xie 2023) to self-attention, cross-attention to the projected text tokens (key
padding mask) and an MLP; every residual branch is gated and the gates start at zero. A final
adaLN + Linear(D -> S), zero-initialised, predicts x0: the model outputs exactly 0 at init.

per_block=True is the paper's mode: every block is its own sequence of length 1, denoised given
only the text and its index (self-attention over one token; no block sees another).

num_neighbors=K > 0 conditions on retrieval (weightgen.diffusion.neighbors): the K training LoRAs
nearest in text, as normalised blocks (B, K, N, S), and their text similarities (B, K). Block i of
every neighbour joins token i (Linear(K*S -> D), so attention stays over N tokens); the
similarities join c. The prediction is the similarity-weighted blend of the neighbours plus the
network's output, and a per-block change of the blend weights read from the last hidden state;
both start at zero, so an untrained model returns the k-nearest blend exactly and training learns
what to change (copying one neighbour included).

pair_dim=F > 0 conditions on the concept's own examples: a fixed description (F,) of a few of its
(input, target) pairs (weightgen.diffusion.pairs) joins c through an MLP; `drop_pairs` (B,) or
missing features select a learned null description, so the model also serves text alone.

Text dropout: during training a sample's text is replaced with probability `cond_drop_prob` by a
learned null text (pooled + one token), which `drop_text=True` also selects at sampling time, so
classifier-free guidance can mix conditional and unconditional predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

try:  # GPU extra; has no CPU kernels
    import xformers.ops as _xops
except ImportError:  # pragma: no cover - depends on the install
    _xops = None


#################################################################################
#                               Attention                                       #
#################################################################################


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """q (B, H, Lq, Dh), k/v (B, H, Lk, Dh), key_mask (B, Lk) bool (True = attend) -> (B, H, Lq, Dh).

    xformers' memory-efficient kernel for unmasked attention on CUDA when installed; otherwise
    (and for masked attention, whose bias xformers wants padded/aligned) torch's SDPA.
    """
    if key_mask is None and _xops is not None and q.is_cuda:
        out = _xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )  # (B, Lq, H, Dh)
        return out.transpose(1, 2)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, D // self.num_heads)  # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, Dh)
        out = attention(q, k, v)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        B, L, D = x.shape
        H, Dh = self.num_heads, D // self.num_heads
        q = self.q(x).reshape(B, L, H, Dh).transpose(1, 2)  # (B, H, L, Dh)
        kv = self.kv(ctx).reshape(B, ctx.shape[1], 2, H, Dh)  # (B, T, 2, H, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, T, Dh)
        out = attention(q, k, v, ctx_mask)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


#################################################################################
#                                 DiT blocks                                    #
#################################################################################


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, L, D), shift/scale (B, D) -> (B, L, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated self-attention, cross-attention to text, MLP.

    per_block=True runs self-attention on (B*N, 1, D): each block token is its own sequence.
    Cross-attention and the MLP act on each token independently, so they need no reshape.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, per_block: bool):
        super().__init__()
        self.per_block = per_block
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross = CrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        # shift/scale/gate for self-attention, cross-attention and MLP
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x: Tensor, c: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        B, N, D = x.shape
        (sh_a, sc_a, g_a, sh_c, sc_c, g_c, sh_m, sc_m, g_m) = self.adaLN_modulation(c).chunk(
            9, dim=1
        )  # 9 x (B, D)
        h = modulate(self.norm1(x), sh_a, sc_a)  # (B, N, D)
        if self.per_block:
            h = self.attn(h.reshape(B * N, 1, D)).reshape(B, N, D)  # (B, N, D)
        else:
            h = self.attn(h)  # (B, N, D)
        x = x + g_a[:, None] * h  # (B, N, D)
        x = x + g_c[:, None] * self.cross(modulate(self.norm2(x), sh_c, sc_c), ctx, ctx_mask)
        x = x + g_m[:, None] * self.mlp(modulate(self.norm3(x), sh_m, sc_m))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, S)


def blend_weights(sims: Tensor) -> Tensor:
    """(B, K) text similarities -> (B, K) blend weights: clipped at 0 and normalised, uniform
    where all are 0 (the k-nearest blend of weightgen.initial.WeightBaselines.knn)."""
    w = sims.float().clamp_min(0)
    total = w.sum(dim=1, keepdim=True)  # (B, 1)
    return torch.where(total > 0, w / total.clamp_min(1e-12), torch.full_like(w, 1 / w.shape[1]))


#################################################################################
#                                  BlockDiT                                     #
#################################################################################


class BlockDiT(ModelMixin, ConfigMixin):
    """forward(x (B,N,S), timesteps (B,), text_pooled (B,Dt), text_tokens (B,L,Dt),
    text_mask (B,L) bool, drop_text (B,) bool | None, neighbors (B,K,N,S) | None,
    neighbor_sims (B,K) | None, pair_features (B,F) | None, drop_pairs (B,) bool | None)
    -> predicted x0 (B, N, S)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_blocks: int,
        block_size: int = 256,
        text_dim: int = 384,
        hidden_size: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        freq_dim: int = 256,
        per_block: bool = False,
        use_block_index: bool = True,
        cond_drop_prob: float = 0.1,
        num_neighbors: int = 0,
        pair_dim: int = 0,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must divide by num_heads {num_heads}")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        D = hidden_size
        self.x_embed = nn.Linear(block_size, D)
        self.block_embed = nn.Parameter(torch.zeros(num_blocks, D)) if use_block_index else None
        self.t_proj = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embed = TimestepEmbedding(freq_dim, D)
        self.text_pool_embed = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, D), nn.SiLU(), nn.Linear(D, D)
        )
        self.text_tok_embed = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, D))
        # null text for dropout / classifier-free guidance: one pooled vector and one token
        self.null_pooled = nn.Parameter(torch.zeros(text_dim))
        self.null_token = nn.Parameter(torch.zeros(text_dim))
        self.blocks = nn.ModuleList(
            [DiTBlock(D, num_heads, mlp_ratio, per_block) for _ in range(depth)]
        )
        self.final = FinalLayer(D, block_size)
        if num_neighbors < 0:
            raise ValueError(f"num_neighbors must be >= 0, got {num_neighbors}")
        if num_neighbors:
            self.nbr_embed = nn.Linear(num_neighbors * block_size, D)
            self.sim_embed = nn.Linear(num_neighbors, D)
            # per block, a change of the neighbours' blend weights (zero-initialised below)
            self.nbr_mix = nn.Linear(D, num_neighbors)
        if pair_dim:
            self.pair_embed = nn.Sequential(
                nn.LayerNorm(pair_dim), nn.Linear(pair_dim, D), nn.SiLU(), nn.Linear(D, D)
            )
            self.null_pairs = nn.Parameter(torch.zeros(pair_dim))
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic)
        if self.block_embed is not None:  # unit scale, like DiT's sin-cos positions: at t=T-1
            nn.init.normal_(self.block_embed, std=1.0)  # a 0.02 index drowns in x_embed(noise)
        nn.init.normal_(self.null_pooled, std=0.02)
        nn.init.normal_(self.null_token, std=0.02)
        for lin in (self.t_embed.linear_1, self.t_embed.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        if self.config.num_neighbors:
            nn.init.zeros_(self.nbr_mix.weight)
            nn.init.zeros_(self.nbr_mix.bias)

    def _text(
        self, pooled: Tensor, tokens: Tensor, mask: Tensor, drop: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Swap in the null text where drop; give every row at least one key (no NaN rows)."""
        mask = mask.to(torch.bool)
        if drop is not None:
            drop = drop.to(device=pooled.device, dtype=torch.bool)
            first = torch.zeros_like(mask)
            first[:, 0] = True
            pooled = torch.where(drop[:, None], self.null_pooled.to(pooled.dtype), pooled)
            tokens = torch.where(drop[:, None, None], self.null_token.to(tokens.dtype), tokens)
            mask = torch.where(drop[:, None], first, mask)
        empty = ~mask.any(dim=1)  # (B,)
        if empty.any():
            mask = mask.clone()
            mask[:, 0] |= empty
        return pooled, tokens, mask

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        text_pooled: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor,
        drop_text: Tensor | None = None,
        neighbors: Tensor | None = None,
        neighbor_sims: Tensor | None = None,
        pair_features: Tensor | None = None,
        drop_pairs: Tensor | None = None,
    ) -> Tensor:
        B, N, S = x.shape
        cfg = self.config
        if (N, S) != (cfg.num_blocks, cfg.block_size):
            raise ValueError(
                f"x: expected (B, {cfg.num_blocks}, {cfg.block_size}), got {tuple(x.shape)}"
            )
        K = cfg.num_neighbors
        if K and (neighbors is None or neighbor_sims is None):
            raise ValueError(f"this model is conditioned on {K} retrieved neighbours: pass them")
        if K and tuple(neighbors.shape) != (B, K, N, S):
            raise ValueError(f"neighbors: expected {(B, K, N, S)}, got {tuple(neighbors.shape)}")
        if drop_text is None and self.training and cfg.cond_drop_prob > 0:
            drop_text = torch.rand(B, device=x.device) < cfg.cond_drop_prob  # (B,)
        dtype = self.x_embed.weight.dtype
        pooled, tokens, mask = self._text(
            text_pooled.to(dtype), text_tokens.to(dtype), text_mask, drop_text
        )
        h = self.x_embed(x.to(dtype))  # (B, N, D)
        if self.block_embed is not None:
            h = h + self.block_embed[None]  # (B, N, D)
        t = self.t_embed(self.t_proj(timesteps.reshape(-1)).to(dtype))  # (B, D)
        if t.shape[0] == 1 and B > 1:
            t = t.expand(B, -1)
        c = t + self.text_pool_embed(pooled)  # (B, D)
        if K:
            nb = neighbors.to(dtype)
            h = h + self.nbr_embed(nb.permute(0, 2, 1, 3).reshape(B, N, K * S))  # (B, N, D)
            c = c + self.sim_embed(neighbor_sims.to(dtype))  # (B, D)
        if cfg.pair_dim:
            null = self.null_pairs.to(dtype).expand(B, -1)  # (B, F)
            if pair_features is None:
                feats = null
            else:
                feats = pair_features.to(dtype)
                if drop_pairs is not None:
                    drop = drop_pairs.to(device=feats.device, dtype=torch.bool)[:, None]
                    feats = torch.where(drop, null, feats)
            c = c + self.pair_embed(feats)  # (B, D)
        ctx = self.text_tok_embed(tokens)  # (B, L, D)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, c, ctx, mask)  # (B, N, D)
            else:
                h = block(h, c, ctx, mask)  # (B, N, D)
        out = self.final(h, c)  # (B, N, S)
        if K:
            w = blend_weights(neighbor_sims).to(out.dtype)[:, None]  # (B, 1, K)
            w = w + self.nbr_mix(F.layer_norm(h, (h.shape[-1],)))  # (B, N, K)
            out = out + torch.einsum("bnk,bkns->bns", w, neighbors.to(out.dtype))
        return out


#################################################################################
#                                   Sizes                                       #
#################################################################################

SIZES: dict[str, dict] = {
    # tiny: CPU tests and the demo; 1.9 M params at N=80, S=256 (~3.9 steps/s at batch 32 on
    # one CPU thread)
    "tiny": dict(hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0, freq_dim=128),
    # base: ~54 M params
    "base": dict(hidden_size=512, depth=8, num_heads=8, mlp_ratio=4.0, freq_dim=256),
    # large: ~635 M params; ZeRO-3 territory
    "large": dict(hidden_size=1024, depth=24, num_heads=16, mlp_ratio=4.0, freq_dim=256),
}


def block_dit(
    size: str, *, num_blocks: int, block_size: int, text_dim: int = 384, **overrides
) -> BlockDiT:
    """A BlockDiT of a named size; `overrides` replace any config value (per_block, depth, ...)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of: {', '.join(SIZES)}")
    kw = {**SIZES[size], **overrides}
    return BlockDiT(num_blocks=num_blocks, block_size=block_size, text_dim=text_dim, **kw)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["SIZES", "BlockDiT", "attention", "blend_weights", "block_dit", "count_params"]
