"""The recipe's splits: disjoint, and no novel operation reaches a training-side stage (proved from
the edit programs of every concept each stage uses)."""

import pytest

from weightgen.concepts import concepts, get_concept
from weightgen.concepts.splits import SPLIT_NAMES, SplitError, Splits
from weightgen.config import load_config

NOVEL = ("colormap", "edges", "cartoon")


def _ops(cs) -> set[str]:
    return {e.op for c in cs for e in c.program}


def test_tiny_recipe_holds_out_three_kinds_of_family():
    preset = load_config("tiny")
    sp = Splits.of(preset)
    assert set(sp.novel_families) == set(NOVEL)  # colour, filter/spatial, stylisation
    assert sp.validation_per_family >= 1


def test_splits_are_disjoint_and_cover_the_catalogue():
    sp = Splits(NOVEL, 1)
    parts = {n: {c.id for c in sp.concepts(n)} for n in SPLIT_NAMES}
    for i, a in enumerate(SPLIT_NAMES):
        for b in SPLIT_NAMES[i + 1 :]:
            assert not parts[a] & parts[b], (a, b)
    assert set().union(*parts.values()) == {c.id for c in concepts()}
    assert all(parts.values())


def test_no_novel_operation_reaches_a_training_side_stage():
    from weightgen.collect.driver import default_concept_ids

    sp = Splits(NOVEL, 1)
    novel_ops = _ops(c for c in concepts() if c.family in NOVEL)
    assert {"colormap", "edges", "pencil", "cartoon", "paint"} <= novel_ops
    novel = sp.concepts("novel")
    assert {c.family for c in novel} == {*NOVEL, "compose"}  # compositions using them go too
    assert all(_ops([c]) & novel_ops for c in novel)
    stages = {
        "base": list(sp.base),
        "collection": [get_concept(i) for i in default_concept_ids(sp, None)],
        "validation (sweep, tuned choices)": sp.concepts("validation"),
        "heldout": sp.concepts("heldout"),
    }
    for stage, cs in stages.items():
        assert cs, stage
        assert not _ops(cs) & novel_ops, stage
        assert not {c.family for c in cs} & set(NOVEL), stage
    # the generator trains on the collection; validation is never collected
    assert not {c.id for c in stages["collection"]} & {c.id for c in sp.validation}


def test_base_and_validation_are_spread_and_stable():
    sp = Splits(NOVEL, 1)
    assert len(sp.base) == 20 and len(set(sp.base)) == 20
    assert len({c.family for c in sp.base}) == 10  # every family left, twice
    assert not set(sp.base) & set(sp.validation)
    assert [c.family for c in sp.validation] == sorted(
        {c.family for c in sp.validation}, key=[c.family for c in sp.validation].index
    )
    assert len(sp.validation) == 10
    assert Splits(NOVEL, 1).validation == sp.validation  # deterministic
    # with nothing held out, the base is the catalogue's own base set
    from weightgen.concepts import base_concepts

    assert list(Splits().base) == base_concepts()


def test_bad_split_settings_are_one_line():
    with pytest.raises(SplitError, match="unknown novel families \\['mosaic'\\]"):
        Splits(("mosaic",))
    with pytest.raises(SplitError, match="unknown split 'test'"):
        Splits().concepts("test")
