import numpy as np
import pytest
import torch

from weightgen.text import TextEncoder, TextEncoderError


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return TextEncoder(max_tokens=16, cache_dir=tmp_path_factory.mktemp("textcache"))


def test_shapes_and_mask(encoder):
    b = encoder.encode(["give the photo a warm sepia tone", "blur"])
    assert b.pooled.shape == (2, 384) and b.tokens.shape == (2, 16, 384) and b.mask.shape == (2, 16)
    assert torch.allclose(b.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    # "blur" is [CLS] blur [SEP]: 3 real tokens, the rest padding and exactly zero
    assert b.mask[1].sum() == 3 and b.tokens[1, 3:].abs().sum() == 0
    assert b.mask[0].sum() > b.mask[1].sum()


def test_similar_texts_are_closer(encoder):
    b = encoder.encode(["make it sepia", "give the photo an old sepia look", "detect the edges"])
    sim = b.pooled @ b.pooled.T
    assert sim[0, 1] > sim[0, 2]


def test_disk_cache_round_trip(encoder, tmp_path):
    first = encoder.encode(["a teal and orange grade"])
    files = list(encoder.cache_dir.rglob("*.npz"))
    assert files
    # a fresh encoder on the same cache never loads the model
    again = TextEncoder(max_tokens=16, cache_dir=encoder.cache_dir)
    second = again.encode(["a teal and orange grade"])
    assert again._model is None
    assert np.array_equal(first.tokens.numpy(), second.tokens.numpy())


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_text_rejected(encoder, bad):
    with pytest.raises(TextEncoderError, match="non-empty"):
        encoder.encode([bad])


def test_unknown_model_path(tmp_path):
    with pytest.raises(TextEncoderError, match="neither"):
        TextEncoder(str(tmp_path / "nope"))


def test_swappable_clip_text_model(tmp_path):
    """A local CLIP text model folder works in place of the default (tiny, random, built here)."""
    import string

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + " ":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32).save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    CLIPTextModel(cfg).save_pretrained(tmp_path)
    enc = TextEncoder(str(tmp_path), max_tokens=8, cache_dir=tmp_path / "cache")
    b = enc.encode(["make it red", "blur"])
    assert enc.dim == 16 and b.pooled.shape == (2, 16) and b.tokens.shape == (2, 8, 16)
    assert b.mask[1].sum() < b.mask[0].sum()  # "blur" is shorter
    assert not torch.allclose(b.pooled[0], b.pooled[1])
