"""BlockDiT, the DDPM loss and the sampler on small CPU models (no DeepSpeed here)."""

import pytest
import torch

from weightgen.diffusion import (
    SIZES,
    BlockDiT,
    block_dit,
    count_params,
    diffusion_loss,
    make_train_scheduler,
    sample_blocks,
)
from weightgen.diffusion.model import attention

N, S, DT, L = 6, 16, 32, 5


def small(**kw) -> BlockDiT:
    cfg = dict(
        num_blocks=N, block_size=S, text_dim=DT, hidden_size=32, depth=2, num_heads=2, freq_dim=32
    )
    return BlockDiT(**{**cfg, **kw})


def jitter(model: BlockDiT, scale: float = 0.05) -> BlockDiT:
    """Open the zero-initialised gates and output layer so every input can reach the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def text(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(B, DT, generator=g)  # (B, Dt)
    tokens = torch.randn(B, L, DT, generator=g)  # (B, L, Dt)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, 3:] = False
    tokens[~mask] = 0
    return pooled, tokens, mask


def run(model, x, t=None, txt=None, drop=None):
    B = x.shape[0]
    t = torch.full((B,), 500) if t is None else t
    pooled, tokens, mask = txt if txt is not None else text(B)
    with torch.no_grad():
        return model(x, t, pooled, tokens, mask, drop_text=drop)


@pytest.mark.parametrize("per_block", [False, True])
def test_shapes_and_zero_output_at_init(per_block):
    m = small(per_block=per_block).eval()
    x = torch.randn(3, N, S)
    out = run(m, x)
    assert out.shape == (3, N, S) and out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero-init final layer
    with pytest.raises(ValueError, match="expected"):
        run(m, torch.randn(3, N + 1, S))


def test_text_conditioning_changes_output():
    m = jitter(small())
    x = torch.randn(2, N, S)
    pooled, tokens, mask = text(2)
    base = run(m, x, txt=(pooled, tokens, mask))
    assert not torch.allclose(base, run(m, x, txt=(pooled + torch.randn(DT), tokens, mask)))
    tok2 = tokens.clone()
    tok2[:, 0] += torch.randn(DT)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(base, run(m, x, txt=(pooled, tok2, mask)))
    # tokens past the mask are ignored
    tok3 = tokens.clone()
    tok3[:, 4] = 100.0
    torch.testing.assert_close(base, run(m, x, txt=(pooled, tok3, mask)))
    # the timestep matters too
    assert not torch.allclose(base, run(m, x, t=torch.tensor([10, 10])))


def test_dropped_text_ignores_text():
    m = jitter(small())
    x = torch.randn(2, N, S)
    drop = torch.ones(2, dtype=torch.bool)
    a = run(m, x, txt=text(2, seed=0), drop=drop)
    b = run(m, x, txt=text(2, seed=1), drop=drop)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, run(m, x, txt=text(2, seed=0)))
    # an all-padding mask does not give NaN
    pooled, tokens, mask = text(2)
    assert torch.isfinite(run(m, x, txt=(pooled, tokens, torch.zeros_like(mask)))).all()


@pytest.mark.parametrize("per_block", [False, True])
def test_block_index(per_block):
    x = torch.randn(1, 1, S).expand(2, N, S).contiguous()  # every block the same
    with_idx = run(jitter(small(per_block=per_block)), x)
    assert not torch.allclose(with_idx[:, 0], with_idx[:, 1])  # the index tells blocks apart
    no_idx = run(jitter(small(per_block=per_block, use_block_index=False)), x)
    torch.testing.assert_close(no_idx[:, 0], no_idx[:, 1])  # nothing does without it


def test_without_index_the_order_does_not_matter():
    m = jitter(small(use_block_index=False))
    x = torch.randn(2, N, S)
    perm = torch.randperm(N)
    torch.testing.assert_close(run(m, x)[:, perm], run(m, x[:, perm]), rtol=1e-4, atol=1e-5)


def test_per_block_mode_keeps_blocks_independent():
    x = torch.randn(2, N, S)
    x2 = x.clone()
    x2[:, 2] += 3.0  # change block 2 only
    others = [i for i in range(N) if i != 2]
    pb = jitter(small(per_block=True))
    a, b = run(pb, x), run(pb, x2)
    torch.testing.assert_close(a[:, others], b[:, others])
    assert not torch.allclose(a[:, 2], b[:, 2])
    full = jitter(small(per_block=False))
    assert not torch.allclose(run(full, x)[:, others], run(full, x2)[:, others])


def test_attention_matches_manual_softmax():
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w = (q @ k.transpose(-1, -2)) / 8**0.5
    w = w.masked_fill(~mask[:, None, None], float("-inf")).softmax(-1)
    torch.testing.assert_close(attention(q, k, v, mask), w @ v, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    m = jitter(small()).train()
    x = torch.randn(2, N, S)
    pooled, tokens, mask = text(2)
    no_drop = torch.zeros(2, dtype=torch.bool)

    def grads():
        m.zero_grad()
        m(
            x, torch.tensor([3, 700]), pooled, tokens, mask, drop_text=no_drop
        ).square().sum().backward()
        return [p.grad.clone() for p in m.parameters()]

    ref = grads()
    m.enable_gradient_checkpointing()
    for a, b in zip(ref, grads()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_save_pretrained_round_trip(tmp_path):
    m = jitter(small(per_block=True, use_block_index=False, cond_drop_prob=0.2))
    m.save_pretrained(tmp_path / "m", safe_serialization=True)
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    m2 = BlockDiT.from_pretrained(tmp_path / "m").eval()
    assert m2.config.per_block and not m2.config.use_block_index
    assert m2.config.cond_drop_prob == 0.2
    x = torch.randn(2, N, S)
    torch.testing.assert_close(run(m, x), run(m2, x))


def test_sizes():
    tiny = block_dit("tiny", num_blocks=80, block_size=256)
    assert 1.5e6 <= count_params(tiny) <= 5e6
    with torch.device("meta"):  # shapes only: no memory, no init cost
        base = block_dit("base", num_blocks=80, block_size=256)
        large = block_dit("large", num_blocks=80, block_size=256, per_block=True)
    assert 40e6 <= count_params(base) <= 70e6
    assert count_params(large) >= 300e6 and large.config.per_block
    with pytest.raises(ValueError, match="unknown model size"):
        block_dit("huge", num_blocks=4, block_size=8)
    assert set(SIZES) == {"tiny", "base", "large"}


# ------------------------------------------------------------------------------ loss


def valid_mask() -> torch.Tensor:
    v = torch.ones(N, S, dtype=torch.bool)
    v[2, 10:] = False  # tail of a tensor
    v[5, 3:] = False
    return v


def test_padding_is_masked_out_of_the_loss():
    m = jitter(small()).train()
    v = valid_mask()
    x0 = torch.randn(4, N, S) * v
    garbage = x0 + (~v) * torch.randn(4, N, S) * 100
    pooled, tokens, mask = text(4)
    losses = []
    for x in (x0, garbage):
        g = torch.Generator().manual_seed(7)
        losses.append(diffusion_loss(m, x, v, pooled, tokens, mask, generator=g))
    torch.testing.assert_close(losses[0], losses[1])
    # the loss is a mean over valid entries only: perfect predictions on them give 0
    assert losses[0].ndim == 0 and losses[0] > 0


def test_loss_is_reproducible_with_a_generator():
    m = jitter(small()).train()
    x0, v = torch.randn(3, N, S), valid_mask()
    pooled, tokens, mask = text(3)
    a = diffusion_loss(m, x0, v, pooled, tokens, mask, generator=torch.Generator().manual_seed(3))
    b = diffusion_loss(m, x0, v, pooled, tokens, mask, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_short_training_lowers_the_loss():
    """x0 is a fixed linear function of the pooled text: the model must learn it."""
    torch.manual_seed(0)
    m = small(cond_drop_prob=0.1).train()
    v = valid_mask()
    W = torch.randn(DT, N * S) / DT**0.5
    sched = make_train_scheduler()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)

    def batch(seed):
        pooled, tokens, mask = text(16, seed)
        return (pooled @ W).reshape(16, N, S) * v, pooled, tokens, mask

    def eval_loss():
        with torch.no_grad():
            x0, p, tk, mk = batch(0)  # a training batch, fixed noise
            g = torch.Generator().manual_seed(0)
            return diffusion_loss(m, x0, v, p, tk, mk, scheduler=sched, generator=g).item()

    before = eval_loss()
    for step in range(200):
        x0, p, tk, mk = batch(step % 8)
        g = torch.Generator().manual_seed(1000 + step)
        loss = diffusion_loss(m, x0, v, p, tk, mk, scheduler=sched, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)  # measured: 1.08 -> 0.52


# ------------------------------------------------------------------------------ sampler


def test_sampler_shapes_determinism_and_padding():
    m = jitter(small())
    pooled, tokens, mask = text(3)
    v = valid_mask()
    for steps in (1, 4):
        a = sample_blocks(
            m,
            pooled,
            tokens,
            mask,
            steps=steps,
            generator=torch.Generator().manual_seed(0),
            valid=v,
        )
        b = sample_blocks(
            m,
            pooled,
            tokens,
            mask,
            steps=steps,
            generator=torch.Generator().manual_seed(0),
            valid=v,
        )
        assert a.shape == (3, N, S) and torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
        assert torch.count_nonzero(a[:, ~v]) == 0
    with pytest.raises(ValueError):
        sample_blocks(m, pooled, tokens, mask, steps=0)


def test_single_step_is_one_x0_prediction_at_the_last_timestep():
    m = jitter(small())
    pooled, tokens, mask = text(2)
    out = sample_blocks(m, pooled, tokens, mask, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(2, N, S, generator=torch.Generator().manual_seed(5))
    ref = run(
        m,
        noise,
        t=torch.tensor([999, 999]),
        txt=(pooled, tokens, mask),
        drop=torch.zeros(2, dtype=torch.bool),
    )
    torch.testing.assert_close(out, ref)


def test_refining_an_init_is_one_x0_prediction_from_it_noised_to_the_strength():
    """SDEdit: strength s starts at t0 = round(s * 999) from sqrt(abar) init + sqrt(1 - abar)
    noise; a lower strength keeps more of the init; strength 1 without init is the plain path."""
    from weightgen.diffusion import make_ddim_scheduler

    m = jitter(small())
    pooled, tokens, mask = text(2)
    init = torch.randn(2, N, S, generator=torch.Generator().manual_seed(9))
    noise = torch.randn(2, N, S, generator=torch.Generator().manual_seed(5))
    abar = make_ddim_scheduler().alphas_cumprod

    def s(strength, steps=1, x=init):
        g = torch.Generator().manual_seed(5)
        return sample_blocks(
            m, pooled, tokens, mask, steps=steps, generator=g, init=x, strength=strength
        )

    for strength, t0 in ((0.5, 500), (0.3, 300)):
        xt = abar[t0].sqrt() * init + (1 - abar[t0]).sqrt() * noise
        ref = run(m, xt, t=torch.tensor([t0, t0]), txt=(pooled, tokens, mask),
                  drop=torch.zeros(2, dtype=torch.bool))  # fmt: skip
        torch.testing.assert_close(s(strength), ref)
    # the prediction moves with the init, the less the more noise covers it
    other = init.flip(0)
    gap = {st: (s(st) - s(st, x=other)).abs().mean().item() for st in (0.2, 1.0)}
    assert gap[0.2] > 10 * gap[1.0]
    plain = sample_blocks(
        m, pooled, tokens, mask, steps=4, generator=torch.Generator().manual_seed(5)
    )
    assert s(1.0, steps=4, x=None).equal(plain)
    assert s(0.5, steps=4).shape == (2, N, S)  # DDIM over the trailing steps <= 500
    # under the whole grid (t0 = 50 < 99): one DDIM step from t0 itself, the x0 prediction there
    xt = abar[50].sqrt() * init + (1 - abar[50]).sqrt() * noise
    ref = run(m, xt, t=torch.tensor([50, 50]), txt=(pooled, tokens, mask),
              drop=torch.zeros(2, dtype=torch.bool))  # fmt: skip
    torch.testing.assert_close(s(0.05, steps=10), ref)
    for bad, msg in ((dict(strength=0.0), "strength"), (dict(strength=1.5), "strength"),
                     (dict(strength=0.5, x=None), "needs an init"),
                     (dict(strength=0.5, x=init[:1]), "init: expected")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            s(**bad)


def test_classifier_free_guidance():
    m = jitter(small())
    pooled, tokens, mask = text(2)

    def s(gs):
        return sample_blocks(
            m, pooled, tokens, mask, guidance=gs, generator=torch.Generator().manual_seed(5)
        )

    noise = torch.randn(2, N, S, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([999, 999])
    cond = run(m, noise, t=t, txt=(pooled, tokens, mask), drop=torch.zeros(2, dtype=torch.bool))
    uncond = run(m, noise, t=t, txt=(pooled, tokens, mask), drop=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(s(3.0), uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s(1.0), cond)
    g4 = sample_blocks(
        m, pooled, tokens, mask, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(5)
    )
    assert g4.shape == (2, N, S) and torch.isfinite(g4).all()


@pytest.mark.gpu
def test_cuda_forward_matches_cpu():
    m = jitter(small())
    x = torch.randn(2, N, S)
    ref = run(m, x)
    out = run(
        m.cuda(), x.cuda(), t=torch.full((2,), 500).cuda(), txt=tuple(t.cuda() for t in text(2))
    )
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-4)
