"""The generator's image loss (weightgen.train.imageloss): exact against a direct base + LoRA
forward, gradients reach the blocks, non-catalogue samples are left out, bad inputs are one-line
errors, and training with it logs the image MSE and records it in the run's config."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from weightgen.blocks import BlockLayout, BlockStatsAccumulator
from weightgen.concepts.pairs import make_pairs
from weightgen.config import GANConfig, LoRAConfig, Preset, TrainConfig
from weightgen.data import ShardWriter, WeightSample
from weightgen.errors import WeightgenError
from weightgen.gan import E2GANGenerator, build_concept_model, load_lora, lora_state_dict, save_base
from weightgen.gan.base import load_base
from weightgen.gan.train import from_model, to_model
from weightgen.train import TrainError, train_generator
from weightgen.train.data import load_train_data
from weightgen.train.imageloss import ImageLoss, concept_of_key

PRESET = Preset(name="t", gan=GANConfig(image_size=16, channels=8), lora=LoRAConfig(rank=2))
IDS = ["tone-010", "tint-016", "blur-003", "sepia-005", "invert-001"]


def _make_run(root: Path, keys: list[str]) -> tuple[Path, Path, BlockLayout]:
    """A base (random weights) and a data set of random LoRAs of its layout under `keys`."""
    torch.manual_seed(0)
    base = E2GANGenerator(PRESET.gan).state_dict()
    save_base(root / "base", base, PRESET, {"steps": 0})
    g = build_concept_model("lora", PRESET.gan, PRESET.lora, base)
    layout = BlockLayout.from_state_dict(lora_state_dict(g), block_size=64)
    acc = BlockStatsAccumulator(layout)
    rng = np.random.default_rng(0)
    ds = root / "ds"
    with ShardWriter(
        ds, layout_hash=layout.hash, block_size=64, num_blocks=layout.num_blocks, maxcount=4,
        extra={"layout": layout.to_dict(), "text_model": "all-MiniLM-L6-v2"},
    ) as w:  # fmt: skip
        for key in keys:
            sd = {k: 0.1 * torch.randn_like(v) for k, v in lora_state_dict(g).items()}
            blocks = layout.to_blocks(sd).numpy()
            tokens = np.zeros((16, 384), np.float16)
            tokens[:5] = rng.normal(size=(5, 384))
            pooled = rng.normal(size=384).astype(np.float32)
            w.write(WeightSample(key, blocks, pooled, tokens=tokens, meta={"text": key}))
            acc.update(blocks)
    (ds / "layout.json").write_text(json.dumps(layout.to_dict()))
    acc.finalize().save(ds / "stats.safetensors")
    return root / "base", ds, layout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgloss")
    return _make_run(root, [f"{c}-s0" for c in IDS] + ["not-a-concept-s0"])


def test_concept_of_key():
    assert concept_of_key("tone-010-s0") == "tone-010"
    assert concept_of_key("compose-080-s12") == "compose-080"
    assert concept_of_key("mysource") == "mysource"


def test_image_loss_is_the_pixel_mse_of_base_plus_lora(run):
    """Given each sample's own normalised LoRA, the loss equals the MSE of load_lora + forward on
    the same crops against make_pairs' targets; gradients reach every valid block value."""
    base_dir, ds, layout = run
    data = load_train_data(ds)
    il = ImageLoss(str(base_dir), data, crops=6, per_call=3, seed=5, progress=False)
    assert il.usable.tolist() == [True] * len(IDS) + [False]  # the foreign key takes no part
    idx = torch.tensor([0, 3, 1])
    pred = data.x0[idx].clone().requires_grad_(True)  # (3, N, S) normalised
    loss = il(pred, idx, torch.Generator().manual_seed(9))

    # the same crops, drawn from the same generator state, through a plain model
    g_crops = torch.Generator().manual_seed(9)
    g = build_concept_model("lora", PRESET.gan, PRESET.lora, load_base(base_dir)[0])
    x, _ = make_pairs(IDS[0], 6, size=16, seed=5, split="collect")
    want = 0.0
    raw = data.x0 * data.stats.std + data.stats.mean
    for i in idx.tolist():
        crops = torch.randperm(6, generator=g_crops)[:3]
        load_lora(g, layout.from_blocks(raw[i] * layout.valid_mask()))
        _, y = make_pairs(IDS[i], 6, size=16, seed=5, split="collect")
        with torch.no_grad():
            out = g(to_model(x[crops]), data.tokens[i][None].expand(3, -1, -1),
                    data.mask[i][None].expand(3, -1))  # fmt: skip
        want += ((from_model(out) - y[crops]) ** 2).mean().item() / 3
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    grad = pred.grad
    assert torch.isfinite(grad).all()
    assert (grad[:, ~layout.valid_mask()] == 0).all()  # padding moves nothing
    assert grad[:, layout.valid_mask()].abs().sum() > 0


def test_image_loss_rejects_bad_inputs(run, tmp_path):
    base_dir, ds, _ = run
    data = load_train_data(ds)
    with pytest.raises(TrainError, match="per_call") as e:
        ImageLoss(str(base_dir), data, crops=2, per_call=3, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(TrainError, match="cannot load the base"):
        ImageLoss(str(tmp_path / "nobase"), data, progress=False)
    # a base of another width does not fit the data set's layout
    other = Preset(name="t", gan=GANConfig(image_size=16, channels=4), lora=LoRAConfig(rank=2))
    save_base(tmp_path / "b4", E2GANGenerator(other.gan).state_dict(), other, {"steps": 0})
    with pytest.raises(TrainError, match="does not fit the data set"):
        ImageLoss(str(tmp_path / "b4"), data, progress=False)
    _, foreign, _ = _make_run(tmp_path / "f", ["mysource-s0", "other-s1"])
    with pytest.raises(TrainError, match="no sample of the data set is a catalogue concept"):
        ImageLoss(str(base_dir), load_train_data(foreign), progress=False)
    with pytest.raises(TrainError, match="image_loss needs the base .*--set generator.base="):
        train_generator(ds, tmp_path / "g", TrainConfig(image_loss=1.0), progress=False)
    assert not (tmp_path / "g").exists()  # refused before anything is written
    with pytest.raises(WeightgenError, match="image_loss must be >= 0"):
        TrainConfig(image_loss=-1.0)


def test_training_with_the_image_loss(run, tmp_path):
    """The image MSE is logged every step and the setting saved; the loss changes training;
    a large weight on it lowers the image MSE of the one-step LoRAs."""
    base_dir, ds, layout = run
    common = dict(
        batch_size=4, lr=3e-3, warmup_steps=1, ckpt_every=100, log_every=1, zero_stage=1,
        threads=1, seed=0, bf16=False, last_t_frac=1.0, ema_decay=0.0,
    )  # fmt: skip
    img = TrainConfig(max_steps=25, image_loss=50.0, image_loss_samples=4, base=str(base_dir),
                      image_loss_crops=4, image_loss_per_call=4, **common)  # fmt: skip
    train_generator(ds, tmp_path / "img", img, progress=False)
    rows = [
        json.loads(ln) for ln in (tmp_path / "img" / "train_log.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 25 and all("image_mse" in r for r in rows)
    assert np.mean([r["image_mse"] for r in rows[-5:]]) < np.mean(
        [r["image_mse"] for r in rows[:5]]
    )
    saved = json.loads((tmp_path / "img" / "config.json").read_text())
    assert saved["image_loss"] == 50.0 and saved["base"] == str(base_dir)
    plain = TrainConfig(max_steps=25, **common)
    train_generator(ds, tmp_path / "plain", plain, progress=False)
    rows0 = [
        json.loads(ln) for ln in (tmp_path / "plain" / "train_log.jsonl").read_text().splitlines()
    ]
    assert "image_mse" not in rows0[0]
    assert [r["loss"] for r in rows0][1:] != pytest.approx([r["loss"] for r in rows][1:])
