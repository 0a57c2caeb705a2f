"""Published results: reports of one run pooled into one, and the per-split index."""

import json

import pytest

from weightgen.cli import main
from weightgen.eval.report import summarise
from weightgen.eval.results import pool_reports, results_index, write_results_index

METHODS = ("scratch", "lora-zero", "generated", "nearest")


def _curve(start: float, gain: float) -> list[dict]:
    """PSNR start, start + gain, ... at steps 0, 10, 20, 30 (0.1 s per step)."""
    return [
        {"step": s, "time_s": s / 10, "psnr": start + gain * k, "ssim": 0.5}
        for k, s in enumerate((0, 10, 20, 30))
    ]


def _report(path, concepts: list[str], lrs=None) -> dict:
    """A benchmark report as run_benchmark writes it, on synthetic curves."""
    gains = {"scratch": 1.0, "lora-zero": 2.0, "generated": 4.0, "nearest": 3.0}
    runs = {
        c: {m: {"curve": _curve(10.0, gains[m] + i), "offset_s": 0.0} for m in METHODS}
        for i, c in enumerate(concepts)
    }
    step0 = {c: {m: {"psnr": 10.0, "ssim": 0.5} for m in ("base", *METHODS)} for c in "abcd"}
    one_off = {"total_s": 100.0, "base_s": 1.0, "collection_s": 1.0, "collection_concepts": 1}
    rep = summarise(step0, runs) | {
        "runs": runs,
        "learning_rates": lrs or {m: 3e-3 for m in METHODS},
        "sweep": {"best": {}, "table": {}},
        "one_off_cost": one_off | {"sensitivity_s": None, "generator_s": 1.0},
        "headline": {"held-out concepts": f"4 at step 0, {len(concepts)} fine-tuned"},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps(rep))
    return rep


def test_pooled_reports_summarise_every_concept_again(tmp_path):
    a = _report(tmp_path / "a", ["a", "b"])
    b = _report(tmp_path / "b", ["c", "d"])
    whole = _report(tmp_path / "whole", ["a", "b", "c", "d"])
    whole["runs"]["c"], whole["runs"]["d"] = b["runs"]["c"], b["runs"]["d"]
    pooled = pool_reports([tmp_path / "a/report.json", tmp_path / "b/report.json"], tmp_path / "p")
    assert sorted(pooled["runs"]) == ["a", "b", "c", "d"]
    assert pooled["methods"] == summarise(a["step0"], whole["runs"])["methods"]
    assert "4 fine-tuned (pooled from 2 reports" in pooled["headline"]["held-out concepts"]
    written = json.loads((tmp_path / "p/report.json").read_text())
    assert written["pooled_from"] == [
        str(tmp_path / "a/report.json"),
        str(tmp_path / "b/report.json"),
    ]
    assert (tmp_path / "p/report.md").is_file() and (tmp_path / "p/curves.png").is_file()


def test_pooling_refuses_reports_of_different_runs(tmp_path):
    _report(tmp_path / "a", ["a", "b"])
    _report(tmp_path / "b", ["b", "c"])
    _report(tmp_path / "c", ["c"], lrs={m: 1e-2 for m in METHODS})
    with pytest.raises(Exception, match=r"shares concepts with an earlier report: \['b'\]"):
        pool_reports([tmp_path / "a/report.json", tmp_path / "b/report.json"], tmp_path / "p")
    with pytest.raises(Exception, match="learning rates or step 0 differ"):
        pool_reports([tmp_path / "a/report.json", tmp_path / "c/report.json"], tmp_path / "p")


def test_index_has_one_table_per_split_with_per_concept_speedups(tmp_path, capsys):
    root = tmp_path / "results"
    _report(root / "heldout-tiny", ["a", "b"])
    rep = _report(root / "novel-tiny", ["a"])
    rep["split"] = "novel"
    (root / "novel-tiny/report.json").write_text(json.dumps(rep))
    md = results_index(root)
    assert md.index("## Split: heldout") < md.index("## Split: novel")
    assert "[heldout-tiny](results/heldout-tiny/report.md)" in md
    # concept a: scratch 10, 11, 12, 13 dB at steps 0-30, so the target (median of the last
    # three) is 12, reached at step 20; generated (10, 14, ...) at step 10: 2x. Concept b (gains
    # 2 and 5): target 14, step 20 against 10: 2x again. lora-zero (gains 2, 3) takes 1 s and
    # 2 s: 1x and 2x, median 1.5x. Final PSNR: median(18, 20) = 19
    assert "| generated | 10.00 | 19.00 | 1.00 | 10.0 | 2/2 | 2.00× | 1.50× |" in md
    assert main(["results", "index", str(root)]) == 0
    assert (tmp_path / "results.md").read_text() == md
    assert write_results_index(root, tmp_path / "x.md").read_text() == md
    assert main(["results", "index", str(tmp_path / "empty")]) == 2
    assert "no */report.json under" in capsys.readouterr().err
