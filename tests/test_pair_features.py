"""Conditioning on a concept's own examples (weightgen.diffusion.pairs): the edit description,
and a generator that tells edits apart by their pairs where the text cannot."""

import json

import numpy as np
import pytest
import torch
from test_train import SHAPES, TEXT_DIM, cfg

from weightgen.blocks import BlockLayout, BlockStatsAccumulator
from weightgen.concepts import concepts, make_pairs
from weightgen.data import ShardWriter, WeightSample
from weightgen.diffusion import GeneratorError, generate_lora, load_generator
from weightgen.diffusion.model import BlockDiT
from weightgen.diffusion.pairs import PAIR_DIM, edit_features, pair_features
from weightgen.errors import WeightgenError
from weightgen.text import TextBatch
from weightgen.train import TrainError, train_generator
from weightgen.train.data import load_train_data


def test_edit_features_recover_a_global_colour_map():
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(6, 3, 40, 40, generator=g)  # away from the clamp
    M = torch.tensor([[0.8, 0.1, 0.0], [0.0, 0.9, 0.05], [0.1, 0.0, 0.7]])
    b = torch.tensor([0.05, -0.02, 0.1])
    y = torch.einsum("ij,njhw->nihw", M, x) + b[None, :, None, None]
    f = edit_features(x, y)
    assert f.shape == (PAIR_DIM,) and f.dtype == torch.float32
    torch.testing.assert_close(f[18:27], M.reshape(-1), atol=2e-3, rtol=0)  # colour map, b
    torch.testing.assert_close(f[27:30], b, atol=2e-3, rtol=0)
    assert f[30] < 1e-3  # no residual: a global colour transform
    assert torch.equal(f, edit_features(x, y))  # deterministic
    assert torch.all(f[57:] == 0)  # the padding
    # a blur keeps the colours but loses detail: the Laplacian ratio (log) goes negative
    blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert edit_features(x, blur)[31] < -0.5
    feats, missing = pair_features([(x, y), None])
    assert missing.tolist() == [False, True] and torch.equal(feats[0], f) and not feats[1].any()
    with pytest.raises(ValueError, match=r"expected two \(n, 3, H, W\) tensors"):
        edit_features(x, y[:, :2])


def test_model_uses_its_null_description_for_missing_pairs():
    torch.manual_seed(0)
    m = BlockDiT(num_blocks=3, block_size=8, text_dim=16, hidden_size=32, depth=1, num_heads=2,
                 freq_dim=32, pair_dim=PAIR_DIM).eval()  # fmt: skip
    for p in m.parameters():  # open every gate, so the conditioning reaches the output
        torch.nn.init.normal_(p, std=0.2)
    args = (torch.randn(2, 3, 8), torch.tensor([10, 500]), torch.randn(2, 16),
            torch.randn(2, 4, 16), torch.ones(2, 4, dtype=bool))  # fmt: skip
    feats = torch.randn(2, PAIR_DIM)
    with_pairs = m(*args, pair_features=feats)
    none = m(*args)
    dropped = m(*args, pair_features=feats, drop_pairs=torch.tensor([True, False]))
    assert not torch.allclose(with_pairs, none)
    torch.testing.assert_close(dropped[0], none[0])
    torch.testing.assert_close(dropped[1], with_pairs[1])


FAMILIES = ("blur", "invert", "sepia", "emboss")


class OneText:
    """Every text -> the same embedding: only the pairs can tell concepts apart."""

    def __init__(self, pooled):
        self.pooled = torch.from_numpy(pooled)

    def encode(self, texts):
        p = self.pooled.expand(len(texts), -1).clone()
        return TextBatch(p, p[:, None].clone(), torch.ones(len(texts), 1, dtype=bool))


def one_text_dataset(root, per_family: int = 5):
    """Catalogue concepts of four families, one random LoRA per family and one text for all."""
    root.mkdir(parents=True)
    layout = BlockLayout(SHAPES, block_size=32)
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=TEXT_DIM).astype(np.float32)
    pooled /= np.linalg.norm(pooled)
    acc = BlockStatsAccumulator(layout)
    lora, held = {}, {}
    with ShardWriter(root, layout_hash=layout.hash, block_size=32, num_blocks=layout.num_blocks,
                     maxcount=16, extra={"layout": layout.to_dict(), "text_model": "one"}) as w:  # fmt: skip
        for fam in FAMILIES:
            lora[fam] = rng.normal(size=layout.num_params).astype(np.float32)
            members = [c for c in concepts() if c.family == fam]
            held[fam] = members[per_family]  # not in the data set
            blocks = layout.to_blocks(layout.unflatten(torch.from_numpy(lora[fam]))).numpy()
            for c in members[:per_family]:
                meta = {"text": "an edit", "concept_id": c.id, "family": fam, "seed": 0}
                w.write(WeightSample(f"{c.id}-s0", blocks, pooled, meta=meta))
                acc.update(blocks)
    (root / "layout.json").write_text(json.dumps(layout.to_dict()))
    acc.finalize().save(root / "stats.safetensors")
    return layout, OneText(pooled), lora, held


def test_pairs_tell_apart_what_the_text_cannot(tmp_path):
    layout, enc, lora, held = one_text_dataset(tmp_path / "ds")
    common = dict(max_steps=300, batch_size=16, lr=2e-3, last_t_frac=1.0, ema_decay=0.9,
                  log_every=50, ckpt_every=300, model_overrides={"depth": 2})  # fmt: skip
    train_generator(tmp_path / "ds", tmp_path / "pairs", cfg(pair_features=True, **common),
                    progress=False)  # fmt: skip
    train_generator(tmp_path / "ds", tmp_path / "text", cfg(**common), progress=False)
    with_pairs, text_only = load_generator(tmp_path / "pairs"), load_generator(tmp_path / "text")
    # a concept of each family the generator never saw, described by 8 of its evaluation pairs
    pairs = [make_pairs(held[f], 8, size=48, seed=3, split="eval") for f in FAMILIES]
    texts = ["an edit"] * len(FAMILIES)

    def err(sds):
        return [float(((layout.flatten(sd).numpy() - lora[f]) ** 2).mean())
                for sd, f in zip(sds, FAMILIES)]  # fmt: skip

    got = generate_lora(with_pairs, texts, encoder=enc, pairs=pairs, seed=1)
    again = generate_lora(with_pairs, texts, encoder=enc, pairs=pairs, seed=1)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, again) for k in a)  # seeded
    from weightgen.api import WeightGenerator

    api = WeightGenerator(with_pairs, enc)  # the Python API reads the same pairs
    assert api.reads_pairs and not WeightGenerator(text_only, enc).reads_pairs
    for from_api, sd in zip(api.generate(texts, pairs=pairs, seed=1), got):
        assert all(torch.equal(from_api.state[k], sd[k]) for k in sd)
    # one text with [x, y] as a list: the first row of the batch (the same noise, the same pairs)
    one = api.generate(texts[0], pairs=list(pairs[0]), seed=1)
    for k in got[0]:
        torch.testing.assert_close(one.state[k], got[0][k])
    with pytest.raises(WeightgenError, match="one pair set per text"):
        api.generate(texts[:2], pairs=pairs[0])
    blind = generate_lora(text_only, texts, encoder=enc, seed=1)  # at best the mean LoRA
    assert np.median(err(got)) < 0.3 * np.median(err(blind)), (err(got), err(blind))
    # the same generator without pairs falls back to its null description (text alone)
    assert np.median(err(generate_lora(with_pairs, texts, encoder=enc, seed=1))) > np.median(
        err(got)
    )
    with pytest.raises(GeneratorError, match="trained without pair features"):
        generate_lora(text_only, texts, encoder=enc, pairs=pairs)


def test_pair_features_need_catalogue_concepts(tmp_path):
    from test_train import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "ds", n=4)
    with pytest.raises(TrainError, match="not a catalogue concept; pair_features needs"):
        load_train_data(tmp_path / "ds", pair_features=True)
