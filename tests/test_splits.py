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


def test_a_training_family_split_is_every_training_side_concept_using_its_operations():
    sp = Splits(NOVEL, 1)
    fam = sp.concepts("family:vignette")
    ops = sp.family_ops("vignette")
    side = {c.id for c in sp.concepts("train")} | {c.id for c in sp.concepts("validation")}
    assert {c.id for c in fam} <= side  # never a heldout or novel concept
    assert all(_ops([c]) & ops for c in fam)
    rest = [c for c in concepts() if c.id in side and c.id not in {f.id for f in fam}]
    assert not _ops(rest) & ops  # what is left for the generator never uses one
    assert {c.family for c in fam} >= {"vignette", "compose"}  # compositions using it too
    for bad in ("family:colormap", "family:nope"):  # novel, unknown
        with pytest.raises(SplitError, match="not a training family"):
            sp.concepts(bad)


def test_derive_leaves_a_family_out(tmp_path):
    from test_pair_features import one_text_dataset

    from weightgen.data import iter_samples, read_manifest
    from weightgen.eval.ablations import derive_dataset

    one_text_dataset(tmp_path / "ds")  # blur, invert, sepia, emboss: 5 concepts each
    ops = Splits(NOVEL, 1).family_ops("sepia")
    info = derive_dataset(str(tmp_path / "ds"), tmp_path / "d", drop_ops=ops)
    kept = [s.meta["family"] for s in iter_samples(str(tmp_path / "d"))]
    assert info["concepts"] == 15 and sorted(set(kept)) == ["blur", "emboss", "invert"]
    assert read_manifest(str(tmp_path / "d")).extra["dropped_ops"] == sorted(ops)
    with pytest.raises(ValueError, match="holds no concept using"):  # nothing to leave out
        derive_dataset(str(tmp_path / "d"), tmp_path / "e", drop_ops=ops)


def test_derive_command_writes_a_family_out_or_one_line(tmp_path, capsys):
    from test_pair_features import one_text_dataset

    from weightgen.cli import main
    from weightgen.data import read_manifest

    one_text_dataset(tmp_path / "ds")
    argv = ["derive", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "d")]
    assert main([*argv, "--drop-family", "blur"]) == 0
    assert read_manifest(str(tmp_path / "d")).extra["concepts"] == 15
    for extra, msg in (
        (["--drop-family", "blur"], "already holds a data set"),
        (["--drop-family", "nope"], "family:nope: not a training family"),
    ):
        capsys.readouterr()
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    # a derivation of a derivation records both families' operations
    assert main(["derive", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "e"),
                 "--drop-family", "sepia"]) == 0  # fmt: skip
    ops = Splits().family_ops("blur") | Splits().family_ops("sepia")
    assert read_manifest(str(tmp_path / "e")).extra["dropped_ops"] == sorted(ops)
