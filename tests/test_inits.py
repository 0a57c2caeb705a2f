"""The retrieval baselines on planted cases: the k nearest blend, the best training LoRA on the
concept's pairs, nearest + noise, and the random-text control's draw."""

import numpy as np
import pytest
import torch

from weightgen.blocks import BlockLayout
from weightgen.config import GANConfig, LoRAConfig
from weightgen.gan import E2GANGenerator, build_concept_model
from weightgen.gan.lora import lora_state_dict
from weightgen.initial import (
    PairScorer,
    WeightBaselines,
    pick_by_pairs,
    pick_candidates,
    scale_delta,
)


def _baselines(loras: list[dict], texts: np.ndarray, ids: list[str]) -> WeightBaselines:
    layout = BlockLayout.from_state_dict(loras[0], block_size=64)
    blocks = np.stack([layout.to_blocks(sd).numpy() for sd in loras])
    mean = layout.from_blocks(torch.from_numpy(blocks.mean(0)))
    std = layout.from_blocks(torch.from_numpy(blocks.std(0) + 1e-3))
    return WeightBaselines(layout, mean, texts.astype(np.float32), blocks, ids, std)


def _random_loras(template: dict, n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in template.items()} for _ in range(n)
    ]


def test_best_by_loss_finds_the_lora_that_made_the_targets():
    gan = GANConfig(image_size=16, channels=8)
    base = E2GANGenerator(gan).state_dict()
    model = build_concept_model("lora", gan, LoRAConfig(), base)
    loras = _random_loras(lora_state_dict(model), 5, seed=0)
    texts = np.eye(5, 4)
    wb = _baselines(loras, texts, [f"c{i}" for i in range(5)])
    tokens, mask = (
        torch.randn(1, gan.max_text_tokens, gan.text_dim),
        torch.ones(1, gan.max_text_tokens),
    )
    x = torch.rand(4, 3, 16, 16)
    from weightgen.gan import load_lora
    from weightgen.gan.train import from_model, to_model

    planted = 3
    load_lora(model, wb.lora(planted))
    with torch.no_grad():
        y = from_model(model(to_model(x), tokens.expand(4, -1, -1), mask.expand(4, -1)))
    lora, cid, loss = wb.best_by_loss(model, x, y, tokens, mask)
    assert cid == "c3" and loss == pytest.approx(0.0, abs=1e-6)
    assert all(torch.equal(lora[k], wb.lora(planted)[k]) for k in lora)
    # the concept itself left out: the runner-up, never the planted one
    _, cid2, loss2 = wb.best_by_loss(model, x, y, tokens, mask, exclude="c3")
    assert cid2 != "c3" and loss2 > 0


def test_pick_chooses_the_candidate_that_made_the_targets():
    """Planted: the targets are base + (generated's update x 2); pick finds that candidate with
    zero loss, scale_delta scales every B @ A exactly, and a tie goes to the first candidate."""
    from weightgen.gan import load_lora
    from weightgen.gan.train import from_model, to_model

    gan = GANConfig(image_size=16, channels=8)
    model = build_concept_model("lora", gan, LoRAConfig(), E2GANGenerator(gan).state_dict())
    gen, near = _random_loras(lora_state_dict(model), 2, seed=1)
    cands = pick_candidates(gen, near)
    assert list(cands) == ["generated", "nearest", "blend0.25", "blend0.5", "blend0.75",
                           "scale1.5", "scale2"]  # fmt: skip
    for k in gen:
        if ".lora_B." in k:
            a = gen[k.replace(".lora_B.", ".lora_A.")].flatten(1)
            doubled = cands["scale2"][k].flatten(1) @ a
            assert torch.equal(doubled, 2 * (gen[k].flatten(1) @ a))
            assert torch.equal(cands["scale2"][k.replace(".lora_B.", ".lora_A.")], gen[k.replace(
                ".lora_B.", ".lora_A.")])  # fmt: skip
    tokens = torch.randn(1, gan.max_text_tokens, gan.text_dim)
    mask = torch.ones(1, gan.max_text_tokens)
    x = torch.rand(4, 3, 16, 16)
    load_lora(model, scale_delta(gen, 2.0))
    with torch.no_grad():
        y = from_model(model(to_model(x), tokens.expand(4, -1, -1), mask.expand(4, -1)))
    name, lora, losses = pick_by_pairs(cands, PairScorer(model, x, y, tokens, mask))
    assert name == "scale2" and losses["scale2"] == pytest.approx(0.0, abs=1e-6)
    assert set(losses) == set(cands) and min(v for k, v in losses.items() if k != name) > 0
    assert lora is cands["scale2"]
    twin = {"a": cands["nearest"], "b": cands["nearest"]}
    assert pick_by_pairs(twin, PairScorer(model, x, y, tokens, mask))[0] == "a"
    with pytest.raises(ValueError, match="no candidates"):
        pick_by_pairs({}, PairScorer(model, x, y, tokens, mask))


def test_knn_blend_weights_the_closest_texts():
    loras = [{"w": torch.full((2, 3), float(i))} for i in range(4)]
    # unit texts: query [1, 0] has cosine 1.0, 0.6, 0.0, -1.0 with the four
    texts = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    wb = _baselines(loras, texts, ["a", "b", "c", "d"])
    q = torch.tensor([1.0, 0.0])
    lora, used = wb.knn(q, 2)
    assert [u[0] for u in used] == ["a", "b"]
    assert torch.allclose(lora["w"], torch.full((2, 3), (1.0 * 0 + 0.6 * 1) / 1.6))
    one, _ = wb.knn(q, 1)
    assert torch.equal(one["w"], wb.nearest(q)[0]["w"])
    # excluded concept skipped; non-positive similarities weigh nothing
    lora, used = wb.knn(q, 3, exclude="a")
    assert [u[0] for u in used] == ["b", "c", "d"]
    assert torch.allclose(lora["w"], torch.ones(2, 3))


def test_nearest_noise_is_seeded_and_scaled_by_the_std():
    from weightgen.eval.inits import _noise, rms_distance

    std = {"w": torch.full((50, 40), 2.0)}
    base = {"w": torch.zeros(50, 40)}
    a = _noise(base, std, 0.5, "0:tone-010")
    assert torch.equal(a["w"], _noise(base, std, 0.5, "0:tone-010")["w"])
    assert not torch.equal(a["w"], _noise(base, std, 0.5, "0:tone-011")["w"])
    assert rms_distance(a, base, std) == pytest.approx(0.5, rel=0.05)


def test_random_text_is_another_familys_and_stable():
    from weightgen.concepts import get_concept
    from weightgen.eval.inits import other_family_text

    c = get_concept("tone-010")
    text, cid = other_family_text(c, seed=0)
    assert get_concept(cid).family != "tone" and text == get_concept(cid).text != c.text
    assert other_family_text(c, seed=0) == (text, cid)
    draws = {other_family_text(c, seed=s)[1] for s in range(20)}
    assert len(draws) > 10  # drawn, not fixed


def test_every_benchmark_method_can_be_fine_tuned():
    from weightgen.config import BenchConfig
    from weightgen.eval.newconcept import FINETUNE_METHODS

    every = BenchConfig(refine_strength=0.5, blend=0.5, pick=True).available_methods
    assert set(every) == set(FINETUNE_METHODS)
