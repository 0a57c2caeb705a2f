"""Concept catalogue, edit ops, source photos and paired data (CPU, ~10 s)."""

import json
import socket
from collections import Counter

import pytest
import torch

from weightgen.concepts import (
    COLLECT_PHOTOS,
    EDITS,
    EVAL_PHOTOS,
    Concept,
    Edit,
    UnknownConceptError,
    apply_program,
    base_concepts,
    catalogue,
    concepts,
    get_concept,
    images,
    load_photo,
    make_pairs,
    random_crops,
    save_concept_grid,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (30-60 ms per conv on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Catalogue
# ----------------------------------------------------------------------------------------------


def test_counts_and_families():
    train, held = concepts("train"), concepts("heldout")
    assert len(train) >= 300
    assert len(held) >= 30
    assert len(train) + len(held) == len(catalogue()) == len(concepts())
    train_families = {c.family for c in train}
    assert len(train_families) >= 10
    assert {c.family for c in held} <= train_families
    assert catalogue() == catalogue()  # deterministic and cached


def test_ids_unique_and_clean():
    ids = [c.id for c in catalogue()]
    assert len(ids) == len(set(ids))
    assert all(i and "." not in i and "/" not in i and " " not in i for i in ids)
    assert all(get_concept(i).id == i for i in ids[::37])


def test_texts_paraphrases_unique():
    for c in catalogue():
        assert len(c.paraphrases) >= 2, c.id
        assert all(t.strip() == t and t for t in c.texts), c.id
    all_texts = [t for c in catalogue() for t in c.texts]
    dups = [t for t, n in Counter(all_texts).items() if n > 1]
    assert not dups


def test_heldout_disjoint_from_training():
    train, held = concepts("train"), concepts("heldout")
    train_texts = {t.lower() for c in train for t in c.texts}
    train_programs = {c.program for c in train}
    train_edits = {e for c in train if len(c.program) == 1 for e in c.program}
    for c in held:
        assert not {t.lower() for t in c.texts} & train_texts, c.id
        assert c.program not in train_programs, c.id
        if len(c.program) == 1:
            assert c.program[0] not in train_edits, c.id
    assert len({c.program for c in catalogue()}) == len(catalogue())


def test_concept_dict_round_trip():
    for c in catalogue()[::11]:
        d = json.loads(json.dumps(c.to_dict()))
        assert Concept.from_dict(d) == c
        assert hash(Concept.from_dict(d).program) == hash(c.program)


def test_base_concepts():
    base = base_concepts()
    assert 16 <= len(base) <= 24
    assert all(c.split == "train" for c in base)
    assert len({c.family for c in base}) >= 10
    assert len({c.id for c in base}) == len(base)


def test_unknown_concept_and_split():
    with pytest.raises(UnknownConceptError) as info:
        get_concept("no-such")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "unknown concept 'no-such'; run `weightgen concepts list` to see ids"
    with pytest.raises(ValueError, match="unknown split"):
        concepts("test")


def test_edit_validation():
    with pytest.raises(ValueError, match="unknown edit op"):
        Edit.of("swirl", amount=1.0)
    a = Edit.of("tint", strength=0.5, color=[1, 0, 0])
    b = Edit("tint", (("color", (1.0, 0.0, 0.0)), ("strength", 0.5)))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        apply_program([a], torch.rand(3, 8, 8))


# ----------------------------------------------------------------------------------------------
# Edits on every concept
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crops16():
    return random_crops(COLLECT_PHOTOS, 2, 16, seed=3)


def test_every_concept_keeps_shape_range_finite(crops16):
    consts = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1).expand(3, 3, 16, 16).contiguous()
    for c in catalogue():
        for x in (crops16, consts):
            y = apply_program(c.program, x)
            assert y.shape == x.shape and y.dtype == x.dtype, c.id
            assert torch.isfinite(y).all(), c.id
            assert y.min() >= 0 and y.max() <= 1, c.id


def test_every_op_is_used():
    used = {e.op for c in catalogue() for e in c.program}
    assert used == set(EDITS)


def test_edits_change_the_image():
    x = random_crops(COLLECT_PHOTOS, 2, 32, seed=5)
    diffs = {c.id: float((apply_program(c.program, x) - x).abs().mean()) for c in catalogue()}
    assert all(d > 0 for d in diffs.values()), [k for k, d in diffs.items() if d == 0]
    weak = [k for k, d in diffs.items() if d < 0.005]
    assert len(weak) <= 0.05 * len(diffs), weak


def test_edits_deterministic():
    x = random_crops(EVAL_PHOTOS, 2, 16, seed=1)
    for c in catalogue()[::7]:
        assert torch.equal(apply_program(c.program, x), apply_program(c.program, x)), c.id


# ----------------------------------------------------------------------------------------------
# Photos and pairs
# ----------------------------------------------------------------------------------------------


def test_photos_offline_and_disjoint(monkeypatch):
    assert not set(COLLECT_PHOTOS) & set(EVAL_PHOTOS)
    assert len(COLLECT_PHOTOS) >= 5 and len(EVAL_PHOTOS) >= 3

    def no_network(*args, **kwargs):
        raise AssertionError("photo loading tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    images._load.cache_clear()
    pixels = {}
    for name in COLLECT_PHOTOS + EVAL_PHOTOS:
        x = load_photo(name)
        assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3, name
        assert 0 <= x.min() and x.max() <= 1 and min(x.shape[1:]) >= 128, name
        pixels[name] = x
    collect = {tuple(pixels[n].shape) + (round(float(pixels[n].sum()), 1),) for n in COLLECT_PHOTOS}
    evals = {tuple(pixels[n].shape) + (round(float(pixels[n].sum()), 1),) for n in EVAL_PHOTOS}
    assert not collect & evals  # no photo content shared under two names


def test_random_crops():
    a = random_crops(COLLECT_PHOTOS, 5, 24, seed=0)
    assert a.shape == (5, 3, 24, 24) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, random_crops(COLLECT_PHOTOS, 5, 24, seed=0))
    assert not torch.equal(a, random_crops(COLLECT_PHOTOS, 5, 24, seed=1))


def test_make_pairs_deterministic_and_split():
    c = get_concept("tint-000")
    x1, y1 = make_pairs(c, 4, size=32, seed=7)
    x2, y2 = make_pairs(c.id, 4, size=32, seed=7)
    assert x1.shape == y1.shape == (4, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(y1, apply_program(c.program, x1))
    xe, _ = make_pairs(c, 4, size=32, seed=7, split="eval")
    assert not torch.equal(x1, xe)
    with pytest.raises(ValueError, match="unknown pair split"):
        make_pairs(c, 2, split="test")


def test_save_concept_grid(tmp_path):
    from PIL import Image

    path = tmp_path / "sub" / "grid.png"
    save_concept_grid("emboss-000", path, n=3, size=32)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.width >= 3 * 32 and im.height >= 2 * 32
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_interleave_spreads_every_prefix_over_the_families():
    from weightgen.concepts import interleave

    train = concepts("train")
    order = interleave(train)
    assert sorted(c.id for c in order) == sorted(c.id for c in train)  # a permutation
    families = {c.family for c in train}
    assert {c.family for c in order[: len(families)]} == families  # one of each first
    # within a family the catalogue order is kept
    tone = [c.id for c in order if c.family == "tone"]
    assert tone == [c.id for c in train if c.family == "tone"]
