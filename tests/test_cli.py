"""The `weightgen` command: output of the catalogue commands, and one clear error line (exit 2)
for every mistake a user can make."""

import os
import subprocess
import sys

import pytest
from _configs import PLAIN

from weightgen.cli import main
from weightgen.concepts import concepts


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_concepts_list(capsys):
    from weightgen.concepts import Splits
    from weightgen.config import load_config

    splits = Splits.of(load_config("tiny"))  # the default recipe's splits
    for split in ("heldout", "novel", "validation", "train"):
        rc, out, _ = _run(capsys, "concepts", "list", "--split", split)
        lines = out.strip().splitlines()
        assert rc == 0 and [ln.split("\t")[0] for ln in lines] == [
            c.id for c in splits.concepts(split)
        ]
        cid, family, text = lines[0].split("\t")
        assert family and text
    rc, out, _ = _run(capsys, "concepts", "list")  # no split: the whole catalogue
    assert rc == 0 and len(out.strip().splitlines()) == len(concepts())
    # a recipe with no novel family: the held-out split is the catalogue's
    rc, out, _ = _run(capsys, "concepts", "list", "--split", "heldout", "--config", PLAIN)
    assert len(out.strip().splitlines()) == len(concepts("heldout"))


def test_concepts_show_writes_png(capsys, tmp_path):
    out = tmp_path / "grid.png"
    rc, stdout, _ = _run(capsys, "concepts", "show", "sepia-005", "--out", str(out))
    assert rc == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sepia" in stdout


def _assert_one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weightgen: error: "), err
    for n in needles:
        assert n in lines[0]


def test_unknown_concept(capsys, tmp_path):
    rc, _, err = _run(
        capsys, "concepts", "show", "no-such-concept", "--out", str(tmp_path / "g.png")
    )
    _assert_one_line_error(rc, err, "unknown concept 'no-such-concept'", "weightgen concepts list")


def test_unknown_config(capsys, tmp_path):
    rc, _, err = _run(capsys, "base", "--config", "huge", "--out", str(tmp_path))
    _assert_one_line_error(rc, err, "unknown config 'huge'", "demo, paper, tiny")


def test_config_overrides_are_typed_and_validated():
    from weightgen.config import ConfigError, Preset, load_config

    before = load_config("tiny")
    p = load_config(
        "tiny", ["gan.channels=8", "lora.rank=4", "concept.lr=1e-3", "lora.targets=stem,head"]
    )
    assert p.gan.channels == 8 and isinstance(p.gan.channels, int)
    assert p.lora.rank == 4 and p.concept.lr == 1e-3
    assert p.lora.targets == ("stem", "head")
    assert Preset.from_dict(p.to_dict()) == p  # saved with the base and read back the same
    assert load_config("tiny") == before != p  # overrides never leak into the config
    for bad, needle in [
        ("gan.channels", "expected section.field=value"),
        ("gan.width=16", "no field 'width'"),
        ("model.channels=16", "unknown section 'model'"),
        ("gan.channels=wide", "'wide' is not a valid int"),
        ("gan.heads=3", "must divide by heads"),  # the typed value still meets validation
        ("lora.rank=0", "rank must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_config("tiny", [bad])


def test_base_override_error_is_one_line(capsys, tmp_path):
    rc, _, err = _run(capsys, "base", "--out", str(tmp_path / "run"), "--set", "gan.channels=wide")
    _assert_one_line_error(rc, err, "'wide' is not a valid int")
    assert not (tmp_path / "run" / "base").exists()


def test_non_writable_output(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a regular file where a folder should go: not writable even as root
    rc, _, err = _run(
        capsys, "concepts", "show", "sepia-005", "--out", str(blocker / "sub" / "g.png")
    )
    _assert_one_line_error(rc, err, "cannot write to")
    rc, _, err = _run(capsys, "base", "--out", str(blocker / "run"))
    _assert_one_line_error(rc, err, "cannot write to")


def test_collect_without_base(capsys, tmp_path):
    rc, _, err = _run(
        capsys,
        "collect",
        "--base",
        str(tmp_path / "nobase"),
        "--out",
        str(tmp_path / "ds"),
        "--set",
        "collect.limit=1",
    )
    _assert_one_line_error(rc, err, "no complete base generator", "weightgen base")


def test_collect_with_a_base_of_another_architecture(capsys, tmp_path):
    """A base saved before the tanh output has the same tensors but other semantics: refused."""
    import json

    from weightgen.config import load_config
    from weightgen.gan import E2GANGenerator, save_base

    p = load_config("tiny")
    save_base(tmp_path / "base", E2GANGenerator(p.gan).state_dict(), p, {"steps": 0})
    metrics = tmp_path / "base" / "metrics.json"
    old = json.loads(metrics.read_text())
    assert old["arch"] == "e2gan-tanh"
    del old["arch"]
    metrics.write_text(json.dumps(old))
    rc, _, err = _run(
        capsys, "collect", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "ds")
    )
    _assert_one_line_error(rc, err, "another generator architecture", "weightgen base --force")


def test_collect_unknown_concept(capsys, tmp_path):
    from weightgen.config import load_config
    from weightgen.gan import E2GANGenerator, save_base

    p = load_config("tiny")
    save_base(tmp_path / "base", E2GANGenerator(p.gan).state_dict(), p, {})
    rc, _, err = _run(
        capsys,
        "collect",
        "--base",
        str(tmp_path / "base"),
        "--out",
        str(tmp_path / "ds"),
        "--concept",
        "nope",
    )
    _assert_one_line_error(rc, err, "unknown concept 'nope'")
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_foreign_dataset_is_named(capsys, tmp_path):
    from weightgen.data import DatasetError, ShardWriter, WeightSample, iter_samples

    with ShardWriter(tmp_path / "ds", layout_hash="abc", block_size=4, num_blocks=2) as w:
        w.write(
            WeightSample(
                "k-s0",
                blocks=__import__("numpy").zeros((2, 4), "float32"),
                text=__import__("numpy").zeros(3, "float32"),
                meta={},
            )
        )
    with pytest.raises(DatasetError, match="layout"):
        list(iter_samples(str(tmp_path / "ds"), expected_layout_hash="def"))


def test_console_script_entry_point():
    exe = os.path.join(os.path.dirname(sys.executable), "weightgen")
    r = subprocess.run(
        [exe, "concepts", "show", "nope", "--out", "/tmp/x.png"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("weightgen: error: unknown concept")


def test_evaluate_needs_a_complete_run(capsys, tmp_path):
    (tmp_path / "generator").mkdir()
    rc, _, err = _run(
        capsys, "evaluate", "--generator", str(tmp_path / "generator"), "--out", str(tmp_path / "r")
    )
    _assert_one_line_error(rc, err, "no base/ beside the generator")


def test_evaluate_fid_needs_a_local_weights_file(tmp_path, capsys):
    """FID only from a local Inception weights file: a missing file is one line, exit 2."""
    from weightgen.errors import WeightgenError
    from weightgen.eval.fid import fid_metric

    with pytest.raises(WeightgenError, match="no such file"):
        fid_metric(tmp_path / "missing.pth")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not checked before torch-fidelity is found")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(WeightgenError, match="torch-fidelity"):
            fid_metric(weights)


def test_benchmark_refuses_a_family_split_before_training(capsys, tmp_path):
    """A family split needs a run derived from a finished one: refused before any stage starts."""
    rc, out, err = _run(capsys, "benchmark", "--out", str(tmp_path / "run"), "--config", PLAIN,
                        "--set", 'bench.split="family:blur"')  # fmt: skip
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "a family split runs" in err
    assert not (tmp_path / "run").exists()
