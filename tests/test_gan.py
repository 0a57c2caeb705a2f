import pytest
import torch

from weightgen.blocks import LayoutMismatchError
from weightgen.config import ConceptTrainConfig, GANConfig, LoRAConfig
from weightgen.gan import (
    E2GANGenerator,
    PatchDiscriminator,
    UNetGenerator,
    attach_lora,
    build_concept_model,
    load_lora,
    lora_state_dict,
    train_concept,
)

CFG = GANConfig(image_size=32, channels=8)


def _text(b=2, L=16, d=384):
    tokens = torch.randn(b, L, d)
    mask = torch.zeros(b, L, dtype=torch.bool)
    mask[:, :5] = True
    return tokens, mask


def test_shapes():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    t, m = _text()
    assert E2GANGenerator(CFG)(x, t, m).shape == x.shape
    assert UNetGenerator(32, 8)(x).shape == x.shape
    assert PatchDiscriminator(8, 2)(x, x).shape[:2] == (2, 1)


def test_text_conditions_the_base():
    g = E2GANGenerator(CFG)
    for p in g.attn.cross_o.parameters():  # make the cross-attention path non-trivial
        torch.nn.init.normal_(p, std=0.5)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    t, m = _text(1)
    assert not torch.allclose(g(x, t, m), g(x, t + 1.0, m))


def test_lora_targets_shared_init_and_identity():
    base = E2GANGenerator(CFG)
    state = base.state_dict()
    a = lora_state_dict(build_concept_model("lora", CFG, LoRAConfig(), state))
    b = lora_state_dict(build_concept_model("lora", CFG, LoRAConfig(), state))
    assert a.keys() == b.keys()
    assert not any(k.startswith("res.") for k in a)  # the ResNet blocks carry no LoRA
    assert {k.split(".lora_")[0] for k in a} == set(LoRAConfig().targets)
    for k in a:
        assert torch.equal(a[k], b[k])  # one shared seed: same basis for every concept
        if ".lora_B." in k:
            assert a[k].abs().sum() == 0
        else:
            assert a[k].abs().sum() > 0
    other = lora_state_dict(build_concept_model("lora", CFG, LoRAConfig(shared_seed=7), state))
    assert not torch.equal(other["stem.lora_A.weight"], a["stem.lora_A.weight"])
    # B = 0: a fresh LoRA leaves the base's output unchanged
    g = build_concept_model("lora", CFG, LoRAConfig(), state)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    t, m = _text(1)
    assert torch.allclose(g(x, t, m), base(x, t, m), atol=1e-6)


def test_load_lora_round_trip_and_mismatch():
    state = E2GANGenerator(CFG).state_dict()
    g = attach_lora(E2GANGenerator(CFG), LoRAConfig())
    sd = {k: torch.randn_like(v) for k, v in lora_state_dict(g).items()}
    load_lora(g, sd)
    assert all(torch.equal(v, sd[k]) for k, v in lora_state_dict(g).items())
    bad = dict(sd)
    bad["stem.lora_A.weight"] = torch.zeros(1, 2)
    with pytest.raises(LayoutMismatchError, match="stem.lora_A.weight"):
        load_lora(g, bad)
    with pytest.raises(LayoutMismatchError, match="missing"):
        load_lora(
            build_concept_model("lora", CFG, LoRAConfig(), state),
            {"x.lora_A.weight": torch.zeros(1)},
        )


def _pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return x, x * 0.5 + 0.3  # a low-contrast, brightened edit


def test_train_concept_learns_and_is_deterministic():
    state = E2GANGenerator(CFG).state_dict()
    t, m = _text(1)
    cfg = ConceptTrainConfig(
        steps=60, batch_size=4, lr=5e-3, eval_every=20, n_train_pairs=16, n_eval_pairs=8
    )
    kw = dict(
        gan_cfg=CFG,
        lora_cfg=LoRAConfig(),
        cfg=cfg,
        base_state=state,
        tokens=t[0],
        mask=m[0],
        train_pairs=_pairs(16, 0),
        eval_pairs=_pairs(8, 1),
        seed=3,
    )
    r = train_concept(**kw)
    assert [p.step for p in r.curve] == [0, 20, 40, 60]
    assert r.psnr_final > r.psnr_step0 + 3.0  # clearly learns the edit
    assert r.curve[-1].time_s >= r.curve[1].time_s > 0
    r2 = train_concept(**kw)
    for k in r.lora:
        assert torch.allclose(r.lora[k], r2.lora[k], atol=1e-6)
    # starting from the learned LoRA is already good at step 0
    r3 = train_concept(**{**kw, "init_lora": r.lora}, steps=0)
    assert abs(r3.psnr_step0 - r.psnr_final) < 0.05


def test_scratch_baseline_trains():
    t, m = _text(1)
    cfg = ConceptTrainConfig(
        steps=30, batch_size=4, lr=2e-3, eval_every=15, n_train_pairs=16, n_eval_pairs=8
    )
    r = train_concept(
        method="scratch",
        gan_cfg=CFG,
        lora_cfg=LoRAConfig(),
        cfg=cfg,
        base_state=None,
        tokens=t[0],
        mask=m[0],
        train_pairs=_pairs(16, 0),
        eval_pairs=_pairs(8, 1),
    )
    assert r.lora is None and r.psnr_final > r.psnr_step0


def test_fused_lora_forward_matches_peft():
    """The merged-weight forward computes peft's base(x) + scaling * B(A(x)), values and
    gradients, on every LoRA layer (convolutions with stride, attention projections)."""
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    g = attach_lora(E2GANGenerator(CFG), LoRAConfig(alpha=16.0))  # scaling 2
    sd = {k: 0.1 * torch.randn_like(v) for k, v in lora_state_dict(g).items()}
    load_lora(g, sd)
    layers = {n: m for n, m in g.named_modules() if isinstance(m, LoraLayer)}
    assert len(layers) == len(LoRAConfig().targets)
    for name, layer in layers.items():
        base = layer.base_layer
        if isinstance(base, torch.nn.Conv2d):
            x = torch.randn(2, base.in_channels, 16, 16)
        else:
            x = torch.randn(2, 5, base.in_features)
        fused = layer(x)
        ref = type(layer).forward(layer, x)  # peft's own forward, bypassing the fused one
        assert torch.allclose(fused, ref, atol=1e-5), name
        a = layer.lora_A["default"].weight
        ga = torch.autograd.grad(fused.square().sum(), a)[0]
        gr = torch.autograd.grad(ref.square().sum(), a)[0]
        assert (ga - gr).abs().max() <= 1e-4 * gr.abs().max(), name


def test_fused_model_copies_use_their_own_weights():
    import copy

    torch.manual_seed(0)
    g = attach_lora(E2GANGenerator(CFG), LoRAConfig())
    load_lora(g, {k: 0.1 * torch.randn_like(v) for k, v in lora_state_dict(g).items()})
    twin = copy.deepcopy(g)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    t, m = _text(1)
    before = g(x, t, m)
    load_lora(twin, {k: torch.zeros_like(v) for k, v in lora_state_dict(twin).items()})
    assert torch.equal(g(x, t, m), before)  # the original is untouched by the copy's weights
    assert not torch.allclose(twin(x, t, m), before)


def test_fuse_refuses_layers_it_cannot_merge():
    from peft import LoraConfig as PeftConfig
    from peft import inject_adapter_in_model

    from weightgen.gan.lora import fuse_lora_forward

    m = inject_adapter_in_model(
        PeftConfig(r=2, target_modules=["0"], lora_dropout=0.1),
        torch.nn.Sequential(torch.nn.Linear(4, 4)),
    )
    with pytest.raises(ValueError, match="cannot fuse the LoRA layer '0'"):
        fuse_lora_forward(m)
