"""Retrieval as conditioning (weightgen.diffusion.neighbors): the bank, the model's k-nearest
start, training on retrieved neighbours, and a planted set where copying the neighbour is the
answer."""

import json

import numpy as np
import pytest
import torch
from test_train import SHAPES, TEXT_DIM, cfg

from weightgen.blocks import BlockLayout, BlockStatsAccumulator
from weightgen.data import ShardWriter, WeightSample
from weightgen.diffusion import generate_lora, load_generator
from weightgen.diffusion.model import BlockDiT, blend_weights
from weightgen.diffusion.neighbors import BANK_FILE, NeighborBank
from weightgen.text import TextBatch
from weightgen.train import TrainError, train_generator
from weightgen.train.data import load_train_data


def test_an_untrained_model_returns_the_k_nearest_blend():
    torch.manual_seed(0)
    m = BlockDiT(num_blocks=3, block_size=8, text_dim=16, hidden_size=32, depth=2, num_heads=2,
                 freq_dim=32, num_neighbors=2).eval()  # fmt: skip
    B = 4
    x, t = torch.randn(B, 3, 8), torch.randint(0, 1000, (B,))
    pooled, tokens, mask = torch.randn(B, 16), torch.randn(B, 5, 16), torch.ones(B, 5, dtype=bool)
    nbrs = torch.randn(B, 2, 3, 8)
    sims = torch.tensor([[0.9, 0.3], [0.5, -0.2], [-0.1, -0.4], [0.0, 0.0]])
    out = m(x, t, pooled, tokens, mask, neighbors=nbrs, neighbor_sims=sims)
    w = torch.tensor([[0.75, 0.25], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])  # clipped, normalised
    torch.testing.assert_close(blend_weights(sims), w)
    torch.testing.assert_close(out, (w[:, :, None, None] * nbrs).sum(1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="conditioned on 2 retrieved neighbours"):
        m(x, t, pooled, tokens, mask)
    with pytest.raises(ValueError, match="neighbors: expected"):
        m(x, t, pooled, tokens, mask, neighbors=nbrs[:, :1], neighbor_sims=sims[:, :1])


def test_bank_one_entry_per_concept_retrieval_excludes_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = ["a1", "a1", "a2", "b1", "b2", "c1"]  # a1 collected with two seeds
    fams = ["a", "a", "a", "b", "b", "c"]
    x0, pooled = torch.randn(6, 3, 8, generator=g), torch.randn(6, 16, generator=g)
    bank, own = NeighborBank.from_samples(x0, pooled, ids, fams)
    assert bank.concept_ids == ["a1", "a2", "b1", "b2", "c1"] and own.tolist() == [0, 0, 1, 2, 3, 4]
    assert torch.equal(bank.blocks[0], x0[0])  # the concept's first sample
    index = bank.training_index(own, 2, family=True)
    for i in range(6):
        rows, sims = index["concept"][0][i], index["concept"][1][i]
        assert own[i] not in rows and sims[0] >= sims[1]
        frows = index["family"][0][i]
        assert all(bank.families[r] != fams[i] for r in frows.tolist())
    # the query is the cosine of pooled embeddings, best first
    rows, sims = bank.query(pooled[3:4] * 5.0, 1)
    assert rows.tolist() == [[2]] and sims.item() == pytest.approx(1.0)
    bank.save(tmp_path / BANK_FILE)
    back = NeighborBank.load(tmp_path / BANK_FILE)
    assert torch.equal(back.blocks, bank.blocks) and torch.equal(back.texts, bank.texts)
    assert (back.concept_ids, back.families) == (bank.concept_ids, bank.families)
    bank.training_index(own, 3, family=True)  # without family a, 3 entries are left
    with pytest.raises(ValueError, match="fewer than k=4"):
        bank.training_index(own, 4, family=True)
    with pytest.raises(ValueError, match="k must be in"):
        bank.query(pooled, 6)


class PlantedEncoder:
    """Texts -> the planted pooled vectors (tokens: the pooled vector as one token)."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts):
        pooled = torch.from_numpy(np.stack([self.table[t] for t in texts]))
        return TextBatch(pooled, pooled[:, None].clone(), torch.ones(len(texts), 1, dtype=bool))


def planted_dataset(root, groups: int = 8, seed: int = 0):
    """Groups of four training concepts with close texts: in each, two twins share one LoRA and
    the other two another, and each text is closest to its twin's. Per group one new concept
    (not in the data set), its text near the first twins', their LoRA its answer: copying the
    nearest neighbour is exactly right, the similarity-weighted blend of the 3 nearest is not.
    Returns the layout, an encoder of every text, {new text: its LoRA} and {id: LoRA}."""
    root.mkdir(parents=True)
    layout = BlockLayout(SHAPES, block_size=32)
    rng = np.random.default_rng(seed)
    acc = BlockStatsAccumulator(layout)
    table, new, flat_of = {}, {}, {}

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    with ShardWriter(root, layout_hash=layout.hash, block_size=32, num_blocks=layout.num_blocks,
                     maxcount=16, extra={"layout": layout.to_dict(), "text_model": "planted"}) as w:  # fmt: skip
        for g in range(groups):
            u = rng.normal(size=TEXT_DIM)
            pair_text = [u + 0.5 * rng.normal(size=TEXT_DIM) for _ in range(2)]
            pair_lora = [rng.normal(size=layout.num_params).astype(np.float32) for _ in range(2)]
            for j in range(4):
                cid = f"g{g}-{j}"
                table[cid] = unit(pair_text[j // 2] + 0.1 * rng.normal(size=TEXT_DIM))
                flat_of[cid] = pair_lora[j // 2]
                blocks = layout.to_blocks(layout.unflatten(torch.from_numpy(flat_of[cid]))).numpy()
                meta = {"text": cid, "concept_id": cid, "family": f"g{g}"}
                w.write(WeightSample(f"{cid}-s0", blocks, table[cid], meta=meta))
                acc.update(blocks)
            table[f"g{g}-new"] = unit(pair_text[0] + 0.1 * rng.normal(size=TEXT_DIM))
            new[f"g{g}-new"] = pair_lora[0]
    (root / "layout.json").write_text(json.dumps(layout.to_dict()))
    acc.finalize().save(root / "stats.safetensors")
    return layout, PlantedEncoder(table), new, flat_of


def test_retrieval_augmented_generator_learns_to_copy_its_neighbour(tmp_path):
    layout, enc, new, flat_of = planted_dataset(tmp_path / "ds")
    data = load_train_data(tmp_path / "ds", neighbors=3)
    rows, _ = data.neighbor_index["concept"]
    assert all(int(rows[i, 0]) == i ^ 1 for i in range(data.num_samples))  # its twin comes first

    out = tmp_path / "gen"
    train_generator(tmp_path / "ds", out, cfg(max_steps=400, batch_size=16, lr=2e-3,
                    neighbors=3, last_t_frac=1.0, ema_decay=0.9, log_every=50, ckpt_every=400,
                    model_overrides={"depth": 2}), progress=False)  # fmt: skip
    bundle = load_generator(out)
    assert bundle.bank.size == 32 and bundle.model.config.num_neighbors == 3
    texts = list(new)
    got = generate_lora(bundle, texts, encoder=enc, seed=1)
    again = generate_lora(bundle, texts, encoder=enc, seed=1)
    for a, b in zip(got, again):  # deterministic for a seed
        assert all(torch.equal(a[k], b[k]) for k in a)

    # a concept the bank holds is never retrieved for itself when excluded (the benchmark tunes
    # on training concepts that way)
    seen, query = [], bundle.bank.query
    bundle.bank.query = lambda p, k, mask=None: (seen.append(mask), query(p, k, mask))[1]
    generate_lora(bundle, ["g0-0", "g1-2"], encoder=enc, exclude=["g0-0", None])
    ids = bundle.bank.concept_ids
    assert seen[0][0].tolist() == [c == "g0-0" for c in ids] and not seen[0][1].any()
    bundle.bank.query = query
    # what the untrained model returns: the similarity-weighted blend of the 3 nearest
    rows, sims = bundle.bank.query(enc.encode(texts).pooled, 3)
    w = blend_weights(sims).numpy()
    ids = bundle.bank.concept_ids
    blend = [sum(w[i, j] * flat_of[ids[r]] for j, r in enumerate(rows[i].tolist()))
             for i in range(len(texts))]  # fmt: skip
    blend_err = [float(((b - new[t]) ** 2).mean()) for b, t in zip(blend, texts)]
    gen_err = [float(((layout.flatten(sd).numpy() - new[t]) ** 2).mean())
               for sd, t in zip(got, texts)]  # fmt: skip
    assert min(blend_err) > 0.05  # the blend is wrong in every group ...
    # ... and the trained generator copies the right neighbour (measured: ~150x lower error)
    assert float(np.median(gen_err)) < 0.1 * float(np.median(blend_err)), (gen_err, blend_err)


def test_neighbours_need_enough_concepts(tmp_path):
    planted_dataset(tmp_path / "ds", groups=1)
    with pytest.raises(TrainError, match="cannot retrieve 5 neighbours"):
        load_train_data(tmp_path / "ds", neighbors=5)


@pytest.mark.parametrize("pool", [0, 3])
def test_neighbours_with_the_image_loss_resume_exactly(tmp_path, pool):
    """Neighbour draws (family drop and the pool's draw included) and the image loss's neighbours
    are functions of the step: a run stopped and resumed logs the losses of an uninterrupted
    one."""
    from test_imageloss import IDS, _make_run

    base_dir, ds, _ = _make_run(tmp_path, [f"{c}-s0" for c in IDS])
    common = dict(
        batch_size=4, lr=3e-3, warmup_steps=1, ckpt_every=4, log_every=1, zero_stage=1, threads=1,
        seed=0, bf16=False, last_t_frac=0.5, ema_decay=0.0, neighbors=2, neighbor_family_drop=0.5,
        neighbor_pool=pool, image_loss=5.0, image_loss_samples=2, base=str(base_dir), image_loss_crops=4,
        image_loss_per_call=2,
    )  # fmt: skip
    from weightgen.config import TrainConfig

    def losses(out):
        rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
        assert all("image_mse" in r for r in rows)
        return [v for r in rows for v in (r["step"], r["loss"], r["image_mse"])]

    train_generator(ds, tmp_path / "a", TrainConfig(max_steps=8, **common), progress=False)
    train_generator(ds, tmp_path / "b", TrainConfig(max_steps=4, **common), progress=False)
    train_generator(ds, tmp_path / "b", TrainConfig(max_steps=8, **common), resume=True,
                    progress=False)  # fmt: skip
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)
    assert load_generator(tmp_path / "b").bank.size == len(IDS)
    with pytest.raises(Exception, match="neighbors"):  # a resumed run keeps its retrieval
        train_generator(ds, tmp_path / "b", TrainConfig(**{**common, "neighbors": 3},
                        max_steps=9), resume=True, progress=False)  # fmt: skip


def test_a_neighbour_pool_varies_the_training_neighbours(tmp_path):
    from weightgen.config import ConfigError, TrainConfig
    from weightgen.eval.ablations import check_ablations, combined

    planted_dataset(tmp_path / "ds", groups=3)
    top = load_train_data(tmp_path / "ds", neighbors=2)
    pooled = load_train_data(tmp_path / "ds", neighbors=2, pool=5)
    assert pooled.neighbor_index["concept"][0].shape == (12, 5)
    prows, psims = pooled.neighbor_index["concept"]
    idx = torch.arange(12)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        blocks, sims = pooled.neighbors(idx, 0.0, g)
        assert blocks.shape[:2] == (12, 2) and sims.shape == (12, 2)
        assert bool((sims[:, 0] >= sims[:, 1]).all())  # most similar first
        for i in range(12):  # each drawn neighbour is one of the sample's five nearest
            rows = [int((psims[i] == s).nonzero()[0, 0]) for s in sims[i]]
            assert torch.equal(blocks[i], pooled.bank.gather(prows[i, rows][None])[0])
        seen.add(tuple(sims[0].tolist()))
    assert len(seen) > 3  # the pairs drawn vary
    # without a pool, always the two nearest
    blocks, sims = top.neighbors(idx, 0.0, g)
    torch.testing.assert_close(sims, psims[:, :2])
    assert torch.equal(blocks, pooled.bank.gather(prows[:, :2]))
    with pytest.raises(
        ConfigError, match=r"neighbor_pool \(3\) is 0 or a pool of at least `neighbors` \(4\)"
    ):
        TrainConfig(neighbors=4, neighbor_pool=3)
    with pytest.raises(ConfigError, match="neighbor_pool"):
        TrainConfig(neighbor_pool=3)  # no neighbours to draw
    assert combined("neighbors4-pool12+pairs")["neighbor_pool"] == 12
    with pytest.raises(ConfigError, match="the pool must hold at least K"):
        check_ablations(["neighbors4-pool2"])
