"""Output sensitivity of LoRA values and the x0-loss weights made from it."""

import pytest
import torch

from weightgen.config import GANConfig, LoRAConfig, Preset
from weightgen.data.sensitivity import WEIGHT_CLAMP, loss_weights
from weightgen.diffusion.schedule import diffusion_loss
from weightgen.gan import E2GANGenerator, build_concept_model, load_lora, lora_state_dict
from weightgen.gan.sensitivity import lora_sensitivity
from weightgen.gan.train import to_model

PRESET = Preset(name="t", gan=GANConfig(image_size=16, channels=8), lora=LoRAConfig(rank=2))


def _setup():
    torch.manual_seed(0)
    base = E2GANGenerator(PRESET.gan).state_dict()
    g = build_concept_model("lora", PRESET.gan, PRESET.lora, base)
    lora = {k: 0.2 * torch.randn_like(v) for k, v in lora_state_dict(g).items()}
    tokens, mask = torch.randn(16, 384), torch.arange(16) < 4
    x = torch.rand(3, 3, 16, 16)
    return base, g, lora, tokens, mask, x


def test_sensitivity_is_the_squared_output_gradient():
    """E_v[(v . dG/dw)^2] = |dG/dw|^2: the probe estimate against central finite differences."""
    base, g, lora, tokens, mask, x = _setup()
    sens = lora_sensitivity(base, PRESET, [(lora, tokens, mask, x)], probes=400, seed=1)
    assert set(sens) == set(lora) and all(sens[k].shape == lora[k].shape for k in lora)

    def out(sd):
        load_lora(g, sd)
        with torch.no_grad():
            return g(to_model(x), tokens[None].expand(3, -1, -1), mask[None].expand(3, -1))

    checked = 0
    for name in ("head.lora_B.weight", "stem.lora_A.weight", "attn.cross_v.lora_B.weight"):
        sd = {k: v.clone() for k, v in lora.items()}
        eps = 1e-2
        sd[name].view(-1)[0] += eps
        hi = out(sd)
        sd[name].view(-1)[0] -= 2 * eps
        lo = out(sd)
        fd = (((hi - lo) / (2 * eps)) ** 2).sum().item()
        est = sens[name].view(-1)[0].item()
        assert est == pytest.approx(fd, rel=0.35), name
        checked += 1
    assert checked == 3
    # the output layer's B moves the image far more than a cross-attention value
    assert sens["head.lora_B.weight"].mean() > 10 * sens["attn.cross_v.lora_A.weight"].mean()


def test_sensitivity_needs_samples():
    base, *_ = _setup()
    with pytest.raises(ValueError, match="no samples"):
        lora_sensitivity(base, PRESET, [])


def test_loss_weights_mean_one_clamped_zero_on_padding():
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 2:] = False  # padding
    std = torch.full((3, 4), 0.5)
    std[1] = 2.0
    # inside the clamp: proportional to sqrt(std^2 * sensitivity)
    sens = torch.tensor([[4.0, 1.0, 2.0, 1.0], [0.25, 0.5, 0.25, 0.25], [1.0, 3.0, 7.0, 7.0]])
    w = loss_weights(sens, std, valid)
    assert w[valid].mean().item() == pytest.approx(1.0, rel=1e-6)
    assert torch.all(w[~valid] == 0)
    assert (w[0, 0] / w[0, 1]).item() == pytest.approx(2.0, rel=1e-5)
    assert (w[1, 1] / w[0, 1]).item() == pytest.approx((0.5 * 16 / 1.0) ** 0.5, rel=1e-5)
    # extreme values are clamped: no value weighs more than hi/lo times another
    sens = torch.tensor([[1e12, 1.0, 1.0, 1.0], [1.0, 1.0, 1e-9, 1.0], [1.0, 1.0, 7.0, 7.0]])
    w = loss_weights(sens, std, valid)
    lo, hi = WEIGHT_CLAMP
    assert w[valid].mean().item() == pytest.approx(1.0, rel=1e-6)
    assert (w[valid].max() / w[valid].min()).item() <= hi / lo * (1 + 1e-5)
    assert w[0, 1] == w[1, 2] == w[valid].min()  # 1 and 1e-9 both sit on the floor
    with pytest.raises(ValueError, match="non-negative"):
        loss_weights(-torch.ones(3, 4), std, valid)
    with pytest.raises(ValueError, match="finite, non-negative"):
        loss_weights(torch.zeros(3, 4), std, valid)
    with pytest.raises(ValueError, match="finite, non-negative"):
        loss_weights(torch.full((3, 4), float("nan")), std, valid)


def test_weighted_diffusion_loss():
    """weight = 1 on every valid value is the plain loss; weight on one block is that block's
    share of the error, scaled by the number of valid values."""
    from weightgen.diffusion.model import block_dit

    torch.manual_seed(0)
    model = block_dit("tiny", num_blocks=3, block_size=8, text_dim=12)
    with torch.no_grad():  # a non-zero prediction, so the error is not just x0
        model.final.linear.bias.normal_()
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[2, 5:] = False
    x0 = torch.randn(4, 3, 8) * valid
    text = (torch.randn(4, 12), torch.randn(4, 2, 12), torch.ones(4, 2, dtype=torch.bool))

    def loss(weight):
        g = torch.Generator().manual_seed(5)
        return diffusion_loss(model, x0, valid, *text, generator=g, weight=weight).item()

    plain = loss(None)
    assert loss(valid.float()) == pytest.approx(plain, rel=1e-6)
    w = torch.zeros(3, 8)
    w[1] = 1.0
    only1 = loss(w)
    w2 = torch.zeros(3, 8)
    w2[0], w2[2] = 1.0, valid[2].float()
    rest = loss(w2)
    assert only1 + rest == pytest.approx(plain, rel=1e-5)  # the blocks' shares add up
    assert only1 != pytest.approx(plain, rel=1e-3)
