"""Collection end to end through a real local Ray: train a few concepts, write shards, read them back,
reassemble the LoRA and reproduce each concept's measured quality in the base."""

import json

import numpy as np
import pytest
import torch

from weightgen.blocks import BlockLayout, BlockStats
from weightgen.collect.job import Job, plan_jobs, vet
from weightgen.concepts import EVAL_SEED_OFFSET, get_concept, make_pairs
from weightgen.config import CollectConfig, ConceptTrainConfig, GANConfig, Preset
from weightgen.data import load_all, read_manifest
from weightgen.gan import E2GANGenerator, build_concept_model, evaluate, save_base
from weightgen.text import get_encoder

IDS = ["tone-010", "tint-016", "blur-003"]


def _small_preset() -> Preset:
    return Preset(
        name="test",
        gan=GANConfig(image_size=32, channels=8),
        concept=ConceptTrainConfig(
            steps=20, batch_size=4, lr=5e-3, eval_every=10, n_train_pairs=8, n_eval_pairs=4
        ),
        collect=CollectConfig(shard_maxcount=2, max_in_flight=2, min_psnr=5.0, max_psnr_drop=5.0),
    )


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    preset = _small_preset()
    path = tmp_path_factory.mktemp("run") / "base"
    save_base(path, E2GANGenerator(preset.gan).state_dict(), preset, {"steps": 0})
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_collect_read_back_and_reproduce(ray_local, base_dir, tmp_path):
    from weightgen.collect import collect

    out = tmp_path / "dataset"
    s = collect(out=str(out), base=base_dir, concept_ids=IDS, progress=False)
    assert s.accepted == 3 and not s.rejected
    m = read_manifest(str(out))
    assert m.num_samples == 3 and len(m.shards) == 2  # maxcount 2
    layout = BlockLayout.from_dict(json.loads((out / "layout.json").read_text()))
    assert layout.hash == m.layout_hash and m.num_blocks == layout.num_blocks
    keys, blocks, text, metas = load_all(str(out), expected_layout_hash=layout.hash)
    assert sorted(keys) == sorted(f"{i}-s0" for i in IDS)
    assert blocks.shape == (3, layout.num_blocks, layout.block_size) and text.shape == (3, 384)
    # padding is exactly zero in every stored sample
    assert np.all(blocks[:, ~layout.valid_mask().numpy()] == 0)
    # statistics are those of the stored blocks
    stats = BlockStats.load(out / "stats.safetensors", expected_layout_hash=layout.hash)
    valid = layout.valid_mask().numpy()
    np.testing.assert_allclose(stats.mean.numpy()[valid], blocks.mean(0)[valid], atol=1e-6)

    from safetensors.torch import load_file

    base_state = load_file(str(base_dir / "generator.safetensors"))
    preset = _small_preset()
    enc = get_encoder()
    for key, b, meta in zip(keys, blocks, metas):
        cid = meta["concept_id"]
        assert meta["layout_hash"] == layout.hash and meta["text"] == get_concept(cid).text
        lora = layout.from_blocks(torch.from_numpy(b))
        g = build_concept_model("lora", preset.gan, preset.lora, base_state, init_lora=lora)
        ex, ey = make_pairs(get_concept(cid), 4, size=32, seed=EVAL_SEED_OFFSET, split="collect")
        t = enc.encode([get_concept(cid).text])
        psnr, _ = evaluate(g, ex, ey, t.tokens, t.mask)
        assert psnr == pytest.approx(meta["metrics"]["psnr_final"], abs=1e-3), key
        assert meta["metrics"]["psnr_final"] > meta["metrics"]["psnr_step0"]


@pytest.mark.ray
def test_rejected_concepts_are_recorded(ray_local, base_dir, tmp_path, monkeypatch):
    from weightgen.collect import driver

    real_vet = driver.vet

    def strict(result, cfg):  # reject one concept as if its training had diverged
        return (
            "non-finite values in head.lora_B.weight"
            if result["concept_id"] == IDS[1]
            else real_vet(result, cfg)
        )

    monkeypatch.setattr(driver, "vet", strict)
    out = tmp_path / "dataset"
    s = driver.collect(out=str(out), base=base_dir, concept_ids=IDS[:2], progress=False)
    assert s.accepted == 1
    assert s.rejected == [
        {"key": f"{IDS[1]}-s0", "reason": "non-finite values in head.lora_B.weight"}
    ]
    assert json.loads((out / "rejected.json").read_text()) == s.rejected
    assert read_manifest(str(out)).num_samples == 1


def _result(**over):
    lora = {
        "a.lora_A.weight": np.ones((2, 3), np.float32),
        "a.lora_B.weight": np.zeros((3, 2), np.float32),
    }
    metrics = {"psnr_step0": 15.0, "psnr_final": 20.0}
    r = {"lora": lora, "metrics": metrics}
    for k, v in over.items():
        (r["metrics"] if k.startswith("psnr") else r["lora"])[k] = v
    return r


def test_vet_rules():
    cfg = CollectConfig(max_abs_weight=10.0, min_psnr=12.0, max_psnr_drop=0.5)
    assert vet(_result(), cfg) is None
    bad = np.ones((2, 3), np.float32)
    bad[0, 0] = np.nan
    assert "non-finite" in vet(_result(**{"a.lora_A.weight": bad}), cfg)
    assert "magnitude" in vet(_result(**{"a.lora_A.weight": np.full((2, 3), 50, np.float32)}), cfg)
    assert "below the floor" in vet(_result(psnr_final=11.0), cfg)
    assert "fell" in vet(_result(psnr_step0=21.0, psnr_final=20.0), cfg)


def test_plan_jobs_and_keys():
    jobs = plan_jobs(["tone-010", "blur-003"], seeds_per_concept=2)
    assert [j.key for j in jobs] == ["tone-010-s0", "tone-010-s1", "blur-003-s0", "blur-003-s1"]
    p = _small_preset()
    assert Job("tone-010", 0).content_id(p) == Job("tone-010", 0).content_id(_small_preset())
    assert Job("tone-010", 0).content_id(p) != Job("tone-010", 1).content_id(p)
