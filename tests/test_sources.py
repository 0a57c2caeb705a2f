"""Pair sources beyond the catalogue: a folder of aligned pairs (pix2pix layouts) and an
InstructPix2Pix-style diffusers pipeline, the latter tiny, random and built offline in the test."""

import string

import numpy as np
import pytest
import torch
from PIL import Image

from weightgen.concepts.sources import (
    DiffusionEditPairs,
    FolderPairs,
    PairSourceError,
    open_pair_folder,
    open_pairs_root,
    pair_sources,
)


def _photo(k: int, h: int = 24, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ab_folder(root, n=6, names=None):
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    for k in range(n):
        a = _photo(k)
        name = f"img{k:02d}.png"
        Image.fromarray(a).save(root / "A" / name)
        Image.fromarray(255 - a).save(root / "B" / (names[k] if names else name))
    return root


def _check_inverted(src: FolderPairs, size: int = 16) -> None:
    x, y = src.pairs(5, size=size, seed=3)
    assert x.shape == y.shape == (5, 3, size, size) and x.dtype == torch.float32
    # the same crop box, resize and flip on both sides: B = 1 - A survives them exactly
    torch.testing.assert_close(y, 1 - x, atol=1e-5, rtol=0)
    x2, _ = src.pairs(5, size=size, seed=3)
    assert torch.equal(x, x2) and not torch.equal(x, src.pairs(5, size=size, seed=4)[0])


def test_a_b_folders(tmp_path):
    src = open_pair_folder(_ab_folder(tmp_path / "inv"), "invert the colours")
    assert src.layout == "ab" and src.id == "pairs-inv" and len(src.names) == 6
    _check_inverted(src)
    # disjoint collect / eval files (every 5th is held out)
    from weightgen.concepts.sources import _split_names

    assert set(_split_names(src.names, "eval")) == {"img04.png"}
    assert "img04.png" not in _split_names(src.names, "collect")
    swapped = open_pair_folder(tmp_path / "inv", "undo the inversion", direction="BtoA", id="undo")
    x, y = swapped.pairs(2, size=8, seed=0)
    torch.testing.assert_close(x, 1 - src.pairs(2, size=8, seed=0)[0], atol=1e-5, rtol=0)
    before = src.fingerprint()
    assert before == open_pair_folder(tmp_path / "inv", "x").fingerprint()
    Image.fromarray(_photo(99)).save(tmp_path / "inv" / "B" / "img00.png")
    assert open_pair_folder(tmp_path / "inv", "x").fingerprint() != before


def test_side_by_side_images(tmp_path):
    root = tmp_path / "facades" / "train"
    root.mkdir(parents=True)
    for k in range(3):
        a = _photo(k, 20, 20)
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(root / f"{k}.jpg", quality=100)
    src = open_pair_folder(tmp_path / "facades", "invert")
    assert src.layout == "side-by-side" and src.images_dir == root
    x, y = src.pairs(4, size=12, seed=0)
    assert (y - (1 - x)).abs().mean() < 0.05  # jpeg: close, not exact


def test_folder_errors_are_one_clear_line(tmp_path):
    with pytest.raises(PairSourceError, match=r"pair folder .*nope does not exist"):
        open_pair_folder(tmp_path / "nope", "t")
    _ab_folder(tmp_path / "bad", n=3, names=["img00.png", "other.png", "img02.png"])
    with pytest.raises(PairSourceError, match=r"1 only in A/ \(e\.g\. img01\.png\); 1 only in B/"):
        open_pair_folder(tmp_path / "bad", "t")
    (tmp_path / "half" / "A").mkdir(parents=True)
    with pytest.raises(PairSourceError, match=r"half/B is missing"):
        open_pair_folder(tmp_path / "half", "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairSourceError, match="no images"):
        open_pair_folder(tmp_path / "empty", "t")
    (tmp_path / "tall").mkdir()
    Image.fromarray(_photo(0, 40, 10)).save(tmp_path / "tall" / "x.png")
    with pytest.raises(PairSourceError, match="side by side"):
        open_pair_folder(tmp_path / "tall", "t")
    with pytest.raises(PairSourceError, match="letters, digits"):
        open_pair_folder(_ab_folder(tmp_path / "ok", n=1), "t", id="a b")


def test_folder_source_collects_like_a_concept(tmp_path):
    """One real (tiny) training job through the collection task, pairs from the folder."""
    from weightgen.blocks import BlockLayout
    from weightgen.collect.driver import _collect_task, _meta, _open_dataset, plan
    from weightgen.collect.finalize import finalize
    from weightgen.collect.job import lora_template, run_job, vet
    from weightgen.config import CollectConfig, ConceptTrainConfig, GANConfig, Preset
    from weightgen.data import load_all, open_storage
    from weightgen.gan import E2GANGenerator

    src = open_pair_folder(_ab_folder(tmp_path / "inv"), "invert the colours")
    preset = Preset(
        name="test",
        gan=GANConfig(image_size=16, channels=8),
        concept=ConceptTrainConfig(steps=6, eval_every=3, n_train_pairs=4, n_eval_pairs=2),
        collect=CollectConfig(min_psnr=0.0, max_psnr_drop=50.0),
    )
    storage = open_storage(str(tmp_path / "ds"))
    layout = BlockLayout.from_state_dict(lora_template(preset), block_size=256)
    _open_dataset(storage, preset, layout, "0" * 64)
    (pj,) = plan([src.id], 1, preset, "0" * 64, {src.id: src})
    ctx = {
        "storage": storage,
        "preset": preset.to_dict(),
        "layout": layout.to_dict(),
        "base_state": E2GANGenerator(preset.gan).state_dict(),
        "runner": run_job,
        "vet": vet,
        "sources": {src.id: src},
    }
    text = (np.zeros(384, np.float32), np.zeros((16, 384), np.float32), np.ones(16, bool))
    rec = _collect_task(ctx, pj, _meta(pj, layout, src), text)
    assert rec["status"] == "done" and rec["key"] == "pairs-inv-s0"
    finalize(storage)
    keys, blocks, _, metas = load_all(str(tmp_path / "ds"), expected_layout_hash=layout.hash)
    assert keys == ["pairs-inv-s0"] and np.isfinite(blocks).all()
    assert metas[0]["source"]["layout"] == "ab" and metas[0]["text"] == "invert the colours"
    assert metas[0]["training_steps"] == 6


# ------------------------------------------------------------------------------------------------
# InstructPix2Pix-style pipeline, tiny and random, saved and loaded by path
# ------------------------------------------------------------------------------------------------


def _tiny_pipeline(path) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # a CLIP BPE tokenizer with no merges: one token per character (+ "</w>" at word ends)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8,  # noisy latents + the encoded input image
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(str(path))


def test_instruct_pix2pix_pipeline_source(tmp_path):
    _tiny_pipeline(tmp_path / "ip2p")
    src = DiffusionEditPairs.open(tmp_path / "ip2p", "make it look like winter", steps=2)
    assert src.id == "edit-make-it-look-like-winter"
    x, y = src.pairs(3, size=32, seed=0)
    assert x.shape == y.shape == (3, 3, 32, 32)
    assert torch.isfinite(y).all() and 0 <= float(y.min()) and float(y.max()) <= 1
    x2, y2 = src.pairs(3, size=32, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic for a seed
    assert len(src.fingerprint()) == 16

    with pytest.raises(PairSourceError, match=r"pipeline folder .*missing does not exist"):
        DiffusionEditPairs.open(tmp_path / "missing", "t")
    (tmp_path / "notapipe").mkdir()
    with pytest.raises(PairSourceError, match="no model_index.json"):
        DiffusionEditPairs.open(tmp_path / "notapipe", "t")


def test_pairs_root_one_concept_per_sub_folder(tmp_path):
    root = tmp_path / "mine"
    _ab_folder(root / "invert")
    (root / "invert" / "text.txt").write_text("invert the colours\n\nmake a negative\n")
    side = root / "side by side"
    side.mkdir(parents=True)
    for k in range(6):
        a = _photo(k)
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(side / f"{k}.png")
    (side / "text.txt").write_text("negative film look")
    (root / ".hidden").mkdir()  # ignored, like any dot-folder
    inv, sbs = open_pairs_root(root)
    assert (inv.id, inv.text, inv.paraphrases) == ("pairs-invert", "invert the colours",
                                                   ("make a negative",))  # fmt: skip
    assert (sbs.id, sbs.text, sbs.layout) == (
        "pairs-side-by-side",
        "negative film look",
        "side-by-side",
    )
    _check_inverted(inv)
    _check_inverted(sbs)
    assert [s.id for s in pair_sources(str(root))] == ["pairs-invert", "pairs-side-by-side"]

    (root / "more").mkdir()
    with pytest.raises(
        PairSourceError, match=r"more has no text.txt: write the concept's sentence"
    ):
        open_pairs_root(root)
    (root / "more" / "text.txt").write_text("\n  \n")
    with pytest.raises(PairSourceError, match=r"text.txt is empty"):
        open_pairs_root(root)
    with pytest.raises(PairSourceError, match="has no sub-folders"):
        open_pairs_root(tmp_path / "mine" / "invert" / "A")
    with pytest.raises(PairSourceError, match="does not exist"):
        open_pairs_root(tmp_path / "nowhere")


def test_editor_sources_from_the_command_line(tmp_path):
    _tiny_pipeline(tmp_path / "ip2p")
    lines = tmp_path / "instructions.txt"
    lines.write_text("make it look like winter\n\nturn it to dusk\n")
    got = pair_sources(editor=str(tmp_path / "ip2p"), instructions=["add fog"],
                       instructions_file=str(lines))  # fmt: skip
    assert [s.text for s in got] == ["add fog", "make it look like winter", "turn it to dusk"]
    assert all(isinstance(s, DiffusionEditPairs) for s in got)
    with pytest.raises(PairSourceError, match="--editor PATH and --instruction"):
        pair_sources(editor=str(tmp_path / "ip2p"))
    with pytest.raises(PairSourceError, match="--editor PATH and --instruction"):
        pair_sources(instructions=["add fog"])
    with pytest.raises(PairSourceError, match="cannot read"):
        pair_sources(editor=str(tmp_path / "ip2p"), instructions_file=str(tmp_path / "none.txt"))
