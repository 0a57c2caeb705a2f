"""The pipeline through the `weightgen` command on a miniature run: base -> collect (Ray) ->
train (DeepSpeed) -> sample -> finetune, and one clear error line for each bad input."""

import json
import statistics

import pytest
import torch
from _configs import PLAIN, sets
from safetensors import safe_open
from safetensors.torch import load_file

from weightgen import lorafiles
from weightgen.cli import main
from weightgen.config import (
    CollectConfig,
    ConceptTrainConfig,
    GANConfig,
    LoRAConfig,
    Preset,
    override,
)
from weightgen.errors import WeightgenError
from weightgen.gan import E2GANGenerator, build_concept_model, load_lora, save_base

IDS = ["tone-010", "tint-016", "blur-003", "sepia-005"]


def _preset(rank=8) -> Preset:
    return Preset(
        name="test",
        gan=GANConfig(image_size=32, channels=8),
        lora=LoRAConfig(rank=rank, alpha=float(rank)),
        concept=ConceptTrainConfig(
            steps=10, batch_size=4, lr=5e-3, eval_every=5, n_train_pairs=8, n_eval_pairs=4
        ),
        collect=CollectConfig(shard_maxcount=2, max_in_flight=2, min_psnr=5.0, max_psnr_drop=5.0),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    save_base(root / "base", E2GANGenerator(_preset().gan).state_dict(), _preset(), {"steps": 0})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        argv = ["collect", "--base", str(root / "base"), "--out", str(root / "dataset")]
        assert main(argv + sum((["--concept", i] for i in IDS), [])) == 0
    finally:
        ray.shutdown()
    argv = ["--base", str(root / "base"), "--data", str(root / "dataset")]
    assert main(["sensitivity", *argv, "--samples", "3", "--images", "2", "--probes", "2"]) == 0
    rc = main(
        ["train", "--data", str(root / "dataset"), "--out", str(root / "generator"), "--no-progress",
         "--config", PLAIN, *sets(generator__max_steps=8, generator__batch_size=4, generator__threads=1,
         generator__ckpt_every=4, generator__loss_weight="sensitivity", generator__image_loss=5,
         generator__image_loss_start=5, generator__log_every=1)]
    )  # fmt: skip
    assert rc == 0
    # the image loss (on from step 5: the 0-based step index 5 is training step 6) is logged
    rows = [
        json.loads(ln) for ln in (root / "generator" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [("image_mse" in r) for r in rows] == [r["step"] > 5 for r in rows]
    assert all(r["image_mse"] > 0 for r in rows if "image_mse" in r)
    # the base beside the data set was found for the image loss; the resolved recipe is saved
    saved = json.loads((root / "generator" / "resolved-config.json").read_text())
    assert saved["config"]["generator"]["base"] == str((root / "base").resolve())
    assert saved["source"] == PLAIN and "generator.max_steps=8" in saved["overrides"]
    return root


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    for n in needles:
        assert n in err[0]


@pytest.mark.slow
@pytest.mark.ray
def test_sample_loads_into_the_base(run, tmp_path, capsys):
    out = tmp_path / "lora.safetensors"
    rc = main(
        [
            "sample",
            "--generator",
            str(run / "generator"),
            "--text",
            "warm it up a little",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "generated: 1 LoRA(s)" in capsys.readouterr().out
    lora = load_file(str(out))
    state = load_file(str(run / "base" / "generator.safetensors"))
    g = build_concept_model("lora", _preset().gan, _preset().lora, state)
    load_lora(g, lora)  # raises on any name or shape mismatch
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    t, m = torch.zeros(1, 16, 384), torch.ones(1, 16, dtype=torch.bool)
    assert torch.isfinite(g(x, t, m)).all()


@pytest.mark.slow
@pytest.mark.ray
def test_sample_batch_writes_index(run, tmp_path, capsys):
    out = tmp_path / "batch"
    texts = tmp_path / "texts.txt"
    texts.write_text("make it sepia\n\nturn it into a teal duotone\n")
    rc = main(
        [
            "sample",
            "--generator",
            str(run / "generator"),
            "--texts",
            str(texts),
            "--text",
            "blur it",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    entries = index["entries"]
    assert [e["text"] for e in entries] == [
        "blur it",
        "make it sepia",
        "turn it into a teal duotone",
    ]
    assert [e["file"] for e in entries] == [
        lorafiles.file_name(i, e["text"]) for i, e in enumerate(entries)
    ]
    assert index["init"] == "generated" and index["steps"] == 1  # jobs/sample.py's scheme
    a, b = (load_file(str(out / e["file"])) for e in entries[:2])
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # text matters
    # retrieval from the training LoRAs beside the generator, and the blend of both
    from weightgen.initial import WeightBaselines, blend_loras
    from weightgen.text import get_encoder

    b = WeightBaselines.from_dataset(str(run / "dataset"))
    near, cid, _ = b.nearest(get_encoder().encode(["blur it"]).pooled[0])
    for init in ("nearest", "blended"):
        rc = main(["sample", "--generator", str(run / "generator"), "--text", "blur it",
                   "--init", init, "--out", str(tmp_path / f"{init}.safetensors")])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
    got = load_file(str(tmp_path / "nearest.safetensors"))
    assert all(torch.equal(got[k], near[k]) for k in near)
    with safe_open(str(tmp_path / "nearest.safetensors"), "pt") as f:
        assert f.metadata()["nearest"] == cid and f.metadata()["init"] == "nearest"
    blended = load_file(str(tmp_path / "blended.safetensors"))
    want = blend_loras(a, near, 0.5)  # `a` is "blur it"'s generated LoRA (sample.seed 0, 1 step)
    assert all(torch.allclose(blended[k], want[k], atol=1e-5) for k in want)


@pytest.mark.slow
@pytest.mark.ray
def test_finetune_from_generated_and_zero(run, tmp_path, capsys):
    for init in ("generated", "zero", "mean", "blended"):
        out = tmp_path / init
        rc = main(
            [
                "finetune",
                "--concept",
                IDS[0],
                "--init",
                init,
                "--run",
                str(run),
                "--set",
                "concept.steps=5",
                "--out",
                str(out),
            ]
        )
        assert rc == 0, capsys.readouterr().err
        curve = json.loads((out / "curve.json").read_text())
        assert curve["steps"] == 5 and [p["step"] for p in curve["curve"]] == [0, 5]
        assert (out / "lora.safetensors").is_file()
    # blended starts between its parents: neither the generated nor the nearest LoRA's step 0
    starts = {
        i: json.loads((tmp_path / i / "curve.json").read_text())["curve"][0]["psnr"]
        for i in ("generated", "blended")
    }
    assert starts["blended"] != starts["generated"]
    rc = main(["finetune", "--concept", IDS[0], "--init", "blended", "--set", "sample.blend=1",
               "--run", str(run), "--out", str(tmp_path / "bad")])  # fmt: skip
    _one_line_error(capsys, rc, "--init blended needs sample.blend in (0, 1), got 1.0")
    # the fine-tune ran on the run's own recipe (saved with its base) with the --set on top
    saved = json.loads((tmp_path / "generated" / "resolved-config.json").read_text())
    assert saved["config"]["concept"] == {**vars(_preset().concept), "steps": 5}


@pytest.mark.slow
@pytest.mark.ray
def test_bad_inputs_one_line(run, tmp_path, capsys):
    gen = str(run / "generator")
    rc = main(
        [
            "sample",
            "--generator",
            str(tmp_path / "none"),
            "--text",
            "x",
            "--out",
            str(tmp_path / "a.safetensors"),
        ]
    )
    _one_line_error(capsys, rc, "no generator")
    rc = main(
        ["sample", "--generator", gen, "--text", "  ", "--out", str(tmp_path / "a.safetensors")]
    )
    _one_line_error(capsys, rc, "non-empty")
    rc = main(["sample", "--generator", gen, "--out", str(tmp_path / "a.safetensors")])
    _one_line_error(capsys, rc, "no text given")
    pairs = str(_pairs_folder(tmp_path / "pairs"))
    two = ["--text", "x", "--text", "y", "--pairs", pairs, "--out", str(tmp_path / "many")]
    rc = main(["sample", "--generator", gen, *two])
    _one_line_error(capsys, rc, "--pairs describes one concept")
    one = ["--text", "x", "--pairs", pairs, "--out", str(tmp_path / "a.safetensors")]
    rc = main(["sample", "--generator", gen, *one])  # the miniature generator reads text only
    _one_line_error(capsys, rc, "trained without pair features: --pairs needs a generator")
    rc = main(["sample", "--generator", gen, *one, "--init", "mean"])
    _one_line_error(capsys, rc, "--init mean ignores it")
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "many").exists()
    other = tmp_path / "rank4base"
    save_base(other, E2GANGenerator(_preset(4).gan).state_dict(), _preset(4), {})
    rc = main(
        [
            "sample",
            "--generator",
            gen,
            "--text",
            "x",
            "--base",
            str(other),
            "--out",
            str(tmp_path / "a.safetensors"),
        ]
    )
    _one_line_error(capsys, rc, "layout mismatch between generator and base")
    rc = main(["sensitivity", "--base", str(other), "--data", str(run / "dataset")])
    _one_line_error(capsys, rc, "does not fit the data set")
    rc = main(["sensitivity", "--base", str(run / "base"), "--data", str(tmp_path / "nope")])
    _one_line_error(capsys, rc, "no manifest")
    rc = main(["sensitivity", "--base", str(run / "base"), "--data", gen, "--probes", "0"])
    _one_line_error(capsys, rc, "--probes must be >= 1")
    assert not (tmp_path / "a.safetensors").exists()
    rc = main(["finetune", "--concept", "nope", "--run", str(run), "--out", str(tmp_path / "f")])
    _one_line_error(capsys, rc, "unknown concept 'nope'")


def _resweep_only_the_generated_row(run, out, sweep, monkeypatch):
    from weightgen import pool
    from weightgen.config import BenchConfig
    from weightgen.eval import sweep as S
    from weightgen.eval.context import BenchContext
    from weightgen.eval.inits import tune_choices

    stale = json.loads(json.dumps(sweep))
    stale["keys"]["generated"]["generator"] = ["another generator"]
    stale["table"]["lora-zero"] = {"0.001": {"score": 99.0, "final": 1.0, "collapsed": 0},
                                   "0.005": {"score": 1.0, "final": 99.0, "collapsed": 0}}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(stale))
    swept, real = [], pool.run_tasks

    def spy(fn, jobs, **kw):
        swept.extend(sorted(j["inits"]) for j in jobs)
        return real(fn, jobs, **kw)

    monkeypatch.setattr(pool, "run_tasks", spy)
    cfg = BenchConfig(sweep_concepts=1, sweep_steps=3, sweep_lrs=(1e-3, 5e-3),
                      lrs={"scratch": 0.002}, workers=1, refine_strength=0.5,
                      blend=0.5, pick=True)  # fmt: skip
    ctx = BenchContext(run, run / "generator")
    choices = tune_choices(ctx, cfg, cfg.trained)
    again = S.sweep_learning_rates(ctx, cfg, out, choices)
    assert swept and all(methods == ["generated"] for methods in swept)
    assert again["best"]["lora-zero"] == 1e-3  # the kept row decides (score 99 at 1e-3)
    assert again["table"]["generated"] == sweep["table"]["generated"]  # same seed, same runs
    assert json.loads((out / "sweep.json").read_text())["keys"] == sweep["keys"]

    # a sweep cut short: its table is gone, its finished runs (OUT/sweep/) are reused, a missing
    # one is run again
    (out / "sweep.json").unlink()
    full = sorted(out.glob("sweep/*.json"))
    lost = [f for f in full if json.loads(f.read_text())["runs"].keys() > {"generated"}][0]
    lost.unlink()
    swept.clear()
    resumed = S.sweep_learning_rates(ctx, cfg, out, choices)
    assert len(swept) == 1 and len(swept[0]) == len(cfg.trained) - 1  # all but scratch (fixed)
    # the same runs as the benchmark's own sweep (not the planted lora-zero row: its table is gone)
    assert resumed["table"] == sweep["table"] and resumed["best"] == sweep["best"]


@pytest.mark.slow
@pytest.mark.ray
def test_evaluate_benchmark_on_a_tiny_run(run, tmp_path, capsys, monkeypatch):
    """The whole benchmark on a miniature run, fine-tunes as Ray tasks: report contract, the
    learning rates come from the sweep grid, sweep on training concepts only, ablation rows."""
    from weightgen.concepts import concepts, get_concept
    from weightgen.eval.metrics import eval_schedule, plateau_quality

    out = tmp_path / "bench"
    argv = ["evaluate", "--generator", str(run / "generator"), "--out", str(out), "--config", PLAIN,
            *sets(bench__per_family=1, bench__concepts=2, bench__step0_concepts=12,
                  bench__lora_steps=4, bench__scratch_max_steps=6, bench__sweep_concepts=1,
                  bench__sweep_steps=3, bench__sweep_lrs="[1e-3, 5e-3]",
                  bench__lrs="{scratch = 0.002}", bench__workers=2, bench__refine_strength=0.5,
                  bench__blend=0.5, bench__pick=True),
            "--ablate", "ddim10", "--ablate", "block128", "--ablate", "empty-text",
            "--ablate", "refine0.5", "--ablate", "blend0.5", "--ablate", "pairs",
            "--ablate", "pick"]  # fmt: skip
    # and the plateau rule for every method: a 100 dB gain is never seen, so runs stop at the first
    # measurement with a measurement 10 steps older (step 10: step 0; the budget is 40)
    plateau = ["evaluate", "--generator", str(run / "generator"), "--out", str(tmp_path / "p"),
               "--config", PLAIN,
               *sets(bench__concepts=1, bench__step0_concepts=1, bench__lora_steps=40,
                     bench__scratch_max_steps=40, bench__sweep_concepts=0, bench__lora_plateau=True,
                     bench__patience_steps=10, bench__min_gain_db=100)]  # fmt: skip
    assert main(plateau) == 0, capsys.readouterr().err
    pr = json.loads((tmp_path / "p" / "report.json").read_text())
    (only,) = pr["runs"].values()
    assert {m: r["curve"][-1]["step"] for m, r in only.items()} == dict.fromkeys(only, 10)
    # step 0 alone (how levers are compared): best-by-loss, scored only on fine-tuned concepts,
    # has none to score
    step0 = ["evaluate", "--generator", str(run / "generator"), "--out", str(tmp_path / "s0"),
             "--config", PLAIN, *sets(bench__finetune=False, bench__step0_concepts=2)]  # fmt: skip
    assert main(step0) == 0, capsys.readouterr().err
    s0 = json.loads((tmp_path / "s0" / "report.json").read_text())
    assert s0["runs"] == {} and len(s0["step0"]) == 2
    assert s0["headline"]["paid back after (new concepts)"].startswith("none: step 0 only")
    assert main(argv) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["methods"]) == {"base", "scratch", "lora-zero", "generated", "nearest", "mean",
                                   "knn-blend", "best-by-loss", "nearest-noise", "random-text",
                                   "refined", "blended", "picked"}  # fmt: skip
    # two targets, each with every trained method's quartiles, speed-ups and a sign test
    for t in ("paper", "hard"):
        table = rep["targets"][t]["methods"]
        assert set(table) == set(rep["methods"]) - {"base"}
        near = table["nearest"]["generated_vs_this"]
        assert near["wins"] + near["losses"] + near["ties"] == 2 and 0 < near["p"] <= 1
        assert "generated_vs_this" not in table["generated"]
        assert set(table["generated"]["vs_scratch"]["ci95"]) >= {"low", "high"}
    for cid, row in rep["per_concept"].items():
        lz = rep["runs"][cid]["lora-zero"]["curve"]
        assert row["hard_target_psnr"] == plateau_quality(lz)
    assert rep["split"]["evaluated"] == "heldout" and rep["split"]["novel_families"] == []
    # PLAIN has no validation split: its choices say they came from training concepts
    assert "training concepts" in rep["choices"]["source"]
    assert rep["choices"]["knn_k"] in (2, 4, 8)
    for cid, used in rep["inits"]["random-text"].items():
        assert used["text"] != get_concept(cid).text
        assert get_concept(used["concept"]).family != get_concept(cid).family
    # refined: the nearest LoRA moved by the generator, so neither of the two at step 0
    for row in rep["step0"].values():
        assert row["refined"]["psnr"] not in (row["nearest"]["psnr"], row["generated"]["psnr"])
    assert set(rep["refined_step0_win_rate"]) == {"generated", "mean", "nearest"}
    assert "refined_vs_lora_zero_spread" in rep["speedup"]
    assert set(rep["blended_step0_win_rate"]) == {"generated", "mean", "nearest"}
    assert "blended_vs_lora_zero_spread" in rep["speedup"]
    # picked starts from the candidate it chose: the same step-0 quality where that is generated
    # or nearest, and every candidate was scored
    for cid, used in rep["inits"]["picked"].items():
        assert len(used["l1"]) == 7 and used["picked"] == min(used["l1"], key=used["l1"].get)
        if used["picked"] in ("generated", "nearest"):
            row = rep["step0"][cid]
            assert row["picked"]["psnr"] == pytest.approx(row[used["picked"]]["psnr"])
    assert "picked_vs_lora_zero_spread" in rep["speedup"]
    assert len(rep["step0"]) == 12 and len(rep["runs"]) == 2
    held = {c.id for c in concepts("heldout")}
    assert set(rep["runs"]) <= held and set(rep["step0"]) <= held
    # the sweep ran on a training concept, never a held-out one, and chose from its grid
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["concepts"] and not set(sweep["concepts"]) & held
    assert rep["learning_rates"]["scratch"] == 0.002  # fixed on the command line: not swept
    assert "scratch" not in sweep["table"]
    from weightgen.eval.sweep import choose_rate

    for m, cells in sweep["table"].items():  # every rate scored and checked for a collapse
        assert set(cells) == {"0.001", "0.005"}
        assert all(set(c) == {"score", "final", "collapsed"} for c in cells.values())
        assert sweep["best"][m] == choose_rate(cells)
    # the sweep is cached per method: with another generator only `generated` is swept again
    _resweep_only_the_generated_row(run, out, sweep, monkeypatch)
    for m in set(rep["methods"]) - {"base", "scratch"}:
        assert rep["learning_rates"][m] in (1e-3, 5e-3)
    for methods in rep["runs"].values():
        assert methods["scratch"]["curve"][-1]["step"] <= 6
        # measured at step 0 and on the benchmark's schedule up to its 4-step budget
        assert [p["step"] for p in methods["generated"]["curve"]] == [0, *eval_schedule(4)]
        assert eval_schedule(4) == [1, 2, 3, 4]
        assert methods["generated"]["offset_s"] > 0  # sampling time is counted
        assert methods["refined"]["offset_s"] > 0
        # blended pays for sampling and the retrieval it blends with
        assert methods["blended"]["offset_s"] > methods["generated"]["offset_s"]
        assert methods["picked"]["offset_s"] > methods["generated"]["offset_s"]
        assert methods["blended"]["offset_s"] > methods["nearest"]["offset_s"] > 0
        assert methods["best-by-loss"]["offset_s"] > 0  # scoring every training LoRA counts
        assert methods["random-text"]["offset_s"] > 0
    assert set(rep["ablations"]) == {"reference", "ddim10", "block128", "empty-text", "refine0.5",
                                     "blend0.5", "pairs", "pick"}  # fmt: skip
    # the pick row: one choice per concept, each one of the candidates
    from weightgen.initial import pick_candidates

    picked = rep["ablations"]["pick"]["picked"]
    names = set(pick_candidates(*[{"x.lora_B.w": torch.ones(1)}] * 2))
    assert sum(picked.values()) == 12 and set(picked) <= names
    # the pairs row: a generator that read each concept's fine-tuning pairs
    from weightgen.diffusion import load_generator

    paired = load_generator(out / "ablations" / "pairs" / "generator")
    assert paired.model.config.pair_dim > 0 and rep["ablations"]["pairs"]["concepts"] == 12
    # the refine0.5 row measures what the refined method starts from
    refined0 = [row["refined"]["psnr"] for row in rep["step0"].values()]
    assert rep["ablations"]["refine0.5"]["psnr_step0"] == pytest.approx(statistics.median(refined0))
    blended0 = [row["blended"]["psnr"] for row in rep["step0"].values()]
    assert rep["ablations"]["blend0.5"]["psnr_step0"] == pytest.approx(statistics.median(blended0))
    # the generator trained with --loss-weight sensitivity: its measurement is a one-off cost
    cost = rep["one_off_cost"]
    assert cost["sensitivity_s"] > 0
    parts = ("base_s", "collection_s", "sensitivity_s", "generator_s")
    assert cost["total_s"] == pytest.approx(sum(cost[k] or 0 for k in parts))
    assert cost["generator_s_from"] == "train_log"  # its log covers every step
    assert (out / "ablations" / "block128" / "generator" / "generator.json").is_file()
    for png in ("curves.png", "step0.png", "grid.png", "speedup.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert {p.stem for p in (out / "grids").glob("*.png")} == set(rep["runs"])  # one per concept
    md = (out / "report.md").read_text()
    for needle in ("Paper and ours side by side", "One-off cost", "| block128 |", "sweep"):
        assert needle in md
    # re-rendering from report.json alone gives the same figures and every section back
    from weightgen.eval.benchmark import render_report

    (out / "report.md").unlink()
    again = render_report(out)
    assert again["summary"]["speedup"] == rep["speedup"]
    assert again["payback"] == rep["payback"] and again["ablations"] == rep["ablations"]
    md2 = (out / "report.md").read_text()
    assert md2 == md
    # ... and with the run and generator given, the one-off cost is measured again, the same
    recost = render_report(out, run=run, generator=run / "generator")
    assert recost["one_off_cost"] == rep["one_off_cost"]  # the same log and files: exact
    assert "over log(step) (the score)" in md
    # a report whose sweep predates the log-step score (one final PSNR per rate) keeps its header
    old = json.loads((out / "report.json").read_text())
    table = old["sweep"]["table"]
    old["sweep"]["table"] = {m: {r: c["final"] for r, c in v.items()} for m, v in table.items()}
    (out / "report.json").write_text(json.dumps(old))
    render_report(out)
    md3 = (out / "report.md").read_text()
    assert "Median final PSNR (dB) over" in md3 and "log(step)" not in md3
    final = f"{next(iter(next(iter(table.values())).values()))['final']:.2f}"
    assert f"| {next(iter(table))} | {final} |" in md3


@pytest.mark.slow
@pytest.mark.ray
def test_warm_started_generator_counts_its_initialisation(run, tmp_path):
    """train --init: the one-off cost adds the whole cost of the generator it started from (its
    run's base, collection, sensitivity and training); a gone initialisation is a clear error."""
    from weightgen.eval.cost import cost_line, one_off_cost

    warm = tmp_path / "warm"
    rc = main(
        ["train", "--data", str(run / "dataset"), "--out", str(warm), "--no-progress",
         "--config", PLAIN, *sets(generator__max_steps=2, generator__batch_size=4,
         generator__threads=1, generator__log_every=1, generator__init_from=run / "generator")]
    )  # fmt: skip
    assert rc == 0
    meta = json.loads((warm / "generator.json").read_text())
    assert meta["train_config"]["init_from"] == str((run / "generator").resolve())
    first = json.loads((run / "generator" / "generator.json").read_text())
    own = one_off_cost(run, first, run / "generator")
    cost = one_off_cost(run, meta, warm)
    assert own["init_generator"] is None and own["init_generator_s"] is None
    assert cost["init_generator_s"] == pytest.approx(own["total_s"])
    parts = ("base_s", "collection_s", "generator_s", "init_generator_s")  # uniform loss here
    assert cost["sensitivity_s"] is None and cost["generator_s_from"] == "train_log"
    assert cost["total_s"] == pytest.approx(sum(cost[k] or 0 for k in parts))
    assert "warm start from" in cost_line(cost)
    gone = dict(meta, train_config=dict(meta["train_config"], init_from=str(tmp_path / "gone")))
    with pytest.raises(WeightgenError, match="warm-started from .* gone"):
        one_off_cost(run, gone, warm)
    # a generator warm-started from its own folder (its initialisation overwritten): an error
    looped = json.loads((warm / "generator.json").read_text())
    looped["train_config"]["init_from"] = str(warm)
    (warm / "generator.json").write_text(json.dumps(looped))
    with pytest.raises(WeightgenError, match="chain returns to"):
        one_off_cost(run, looped, warm)


def test_derived_dataset_recut_is_exact(run, tmp_path):
    from weightgen.blocks import BlockLayout
    from weightgen.data import load_all
    from weightgen.eval.ablations import derive_dataset

    src = str(run / "dataset")
    info = derive_dataset(src, tmp_path / "d", block_size=128, concepts=2)
    assert info == {"samples": 2, "concepts": 2, "block_size": 128}
    old = BlockLayout.from_dict(json.loads((run / "dataset" / "layout.json").read_text()))
    new = BlockLayout.from_dict(json.loads((tmp_path / "d" / "layout.json").read_text()))
    ka, ba, _, _ = load_all(src, expected_layout_hash=old.hash)
    kb, bb, _, _ = load_all(str(tmp_path / "d"), expected_layout_hash=new.hash)
    assert new.block_size == 128 and bb.shape[1] == new.num_blocks
    for k, b in zip(kb, bb):
        a = ba[list(ka).index(k)]
        la, lb = old.from_blocks(torch.from_numpy(a)), new.from_blocks(torch.from_numpy(b))
        assert all(torch.equal(la[n], lb[n]) for n in la)
    # the sensitivity (written by `weightgen sensitivity` in the fixture) is re-cut value for value
    from weightgen.blocks import BlockStats
    from weightgen.train.data import load_loss_weights

    sa = load_file(str(run / "dataset" / "sensitivity.safetensors"))["sensitivity"]
    sb = load_file(str(tmp_path / "d" / "sensitivity.safetensors"))["sensitivity"]
    ea, eb = old.from_blocks(sa), new.from_blocks(sb)
    assert all(torch.equal(ea[n], eb[n]) for n in ea) and sb.shape[1] == 128
    w = load_loss_weights(
        str(tmp_path / "d"), new, BlockStats.load(tmp_path / "d" / "stats.safetensors")
    )
    assert w.shape == (new.num_blocks, 128) and w[new.valid_mask()].mean().item() == pytest.approx(
        1.0
    )


@pytest.mark.slow
@pytest.mark.ray
def test_demo_reuses_finished_stages_and_writes_the_report(run, tmp_path, capsys):
    """`weightgen demo` on a run whose base and data set are done: the base and collection are
    reused; the generator stage measures the sensitivity and trains with it and the image loss; the evaluation
    writes the report `make run` promises."""
    import shutil

    from weightgen.eval.pipeline import run_pipeline

    demo = tmp_path / "demo"
    for part in ("base", "dataset"):
        shutil.copytree(run / part, demo / part)
    (demo / "dataset" / "sensitivity.safetensors").unlink()
    recipe = override(
        _preset(),
        ["generator.max_steps=4", "generator.loss_weight=sensitivity", "generator.image_loss=5",
         "bench.per_family=1", "bench.concepts=1", "bench.sweep_concepts=0", "bench.lora_steps=6",
         "bench.scratch_max_steps=6"],
    )  # fmt: skip
    result = run_pipeline(demo, recipe)
    out = capsys.readouterr().out
    assert "base: reusing" in out and "dataset: reusing" in out
    assert (demo / "dataset" / "sensitivity.safetensors").is_file()
    timings = json.loads((demo / "report" / "timings.json").read_text())
    assert "base_s" not in timings and timings["sensitivity_s"] > 0  # the base was reused
    meta = json.loads((demo / "generator" / "generator.json").read_text())
    assert meta["train_config"]["loss_weight"] == "sensitivity"
    assert meta["train_config"]["max_steps"] == 4
    assert meta["train_config"]["image_loss"] == 5.0  # and with the image loss on every step
    rows = [
        json.loads(ln)
        for ln in (demo / "generator" / "train_log.jsonl").read_text().split("\n")
        if ln
    ]
    assert rows and all(r.get("image_mse", 0) > 0 for r in rows)
    rep = json.loads((demo / "report" / "report.json").read_text())
    assert len(rep["runs"]) == 1 and len(rep["step0"]) == len(concepts_heldout())
    assert result["summary"]["methods"]["generated"]["psnr_step0"] is not None
    for name in ("report.md", "curves.png", "step0.png", "speedup.png", "grid.png", "timings.json"):
        assert (demo / "report" / name).is_file(), name
    # a rerun resumes: every stage reused, the fine-tuned concept read back as it was saved
    again = run_pipeline(demo, recipe)
    out = capsys.readouterr().out
    assert "generator: reusing" in out and "fine-tune: reusing 1 finished of 1" in out
    assert again["runs"] == rep["runs"]
    # a finished generator of another recipe is never reused as this one's
    other = override(recipe, ["generator.pair_features=true", "generator.threads=2"])
    with pytest.raises(WeightgenError, match=r"another \[generator\] recipe: pair_features "
                       r"False \(recipe: True\); give a new --out"):  # fmt: skip
        run_pipeline(demo, other)
    # and from the command line, refused before the run's saved recipe is rewritten
    (demo / "config.json").write_text("the run's own recipe")
    rc = main(["benchmark", "--out", str(demo), "--config", PLAIN,
               *sets(generator__pair_features=True)])  # fmt: skip
    _one_line_error(capsys, rc, "was trained with another [generator] recipe")
    assert (demo / "config.json").read_text() == "the run's own recipe"
    # the novel split of a run whose recipe holds no family out: one line, exit 2
    rc = main(["benchmark", "--out", str(demo), "--config", PLAIN, "--split", "novel",
               *sets(generator__max_steps=4, generator__loss_weight="sensitivity",
                     generator__image_loss=5)])  # fmt: skip
    _one_line_error(capsys, rc, "the recipe's novel split is empty")
    rc = main(["evaluate", "--generator", str(demo / "generator"), "--out", str(tmp_path / "v"),
               "--config", PLAIN, "--split", "validation"])  # fmt: skip
    _one_line_error(capsys, rc, "validation split is empty: the run's base was trained with no "
                    "[split] validation_per_family")  # fmt: skip
    # a family split measures only a run derived without that family
    family = ["evaluate", "--generator", str(demo / "generator"), "--out", str(tmp_path / "f"),
              "--config", PLAIN, "--split"]  # fmt: skip
    _one_line_error(capsys, main([*family, "family:blur"]), "holds its concepts; evaluate a run")
    _one_line_error(capsys, main([*family, "family:nope"]), "family:nope: not a training family")


def concepts_heldout():
    from weightgen.concepts import concepts

    return concepts("heldout")


# ------------------------------------------------------------------------------------------------
# A user's own concept: pairs folder -> new-concept -> LoRA / PEFT adapter -> apply
# ------------------------------------------------------------------------------------------------


def _user_edit(x):
    """An edit the catalogue does not hold: each channel quantised to 3 levels, then tinted green."""
    import numpy as np

    return np.clip(np.round(x * 2) / 2 * np.array([0.7, 1.0, 0.7]), 0, 1)


def _pairs_folder(root, n=6, size=(48, 40)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for side in ("A", "B"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = rng.random((size[1], size[0], 3))
        x = (x + np.linspace(0, 1, size[0])[None, :, None]) / 2  # some structure
        Image.fromarray((x * 255).astype("uint8")).save(root / "A" / f"p{i}.png")
        Image.fromarray((_user_edit(x) * 255).astype("uint8")).save(root / "B" / f"p{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.ray
def test_new_concept_apply_round_trip_and_peft_adapter(run, tmp_path, capsys):
    from peft import PeftModel
    from PIL import Image

    from weightgen.adapter import read_lora
    from weightgen.gan import build_concept_model, load_base

    pairs = _pairs_folder(tmp_path / "pairs")
    out = tmp_path / "concept"
    text = "quantise the colours to three levels and tint the photo green"
    argv = ["new-concept", "--pairs", str(pairs), "--text", text, "--out", str(out),
            "--model", str(run), "--init", "generated", "--steps", "8", "--compare"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["concept"]["files"] == 6
    assert summary["psnr_base"] is not None and "compare" in summary
    assert set(json.loads((out / "curve.json").read_text())) == {"generated", "zero"}
    for name in ("lora.safetensors", "curve.png", "preview.png", "resolved-config.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".concept.partial-*"))  # the staging folder is gone
    # the PEFT adapter loads through peft and edits exactly as weightgen's own loader
    flat, meta = read_lora(out / "lora.safetensors")
    peft_sd, info = read_lora(out / "adapter")
    assert meta["text"] == info["text"] == text
    assert flat.keys() == peft_sd.keys() and all(torch.equal(flat[k], peft_sd[k]) for k in flat)
    state, preset = load_base(run / "base")
    ours = build_concept_model("lora", preset.gan, preset.lora, state, flat).eval()
    bare = E2GANGenerator(preset.gan)
    bare.load_state_dict(state)
    theirs = PeftModel.from_pretrained(bare, str(out / "adapter")).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tok = torch.randn(2, preset.gan.max_text_tokens, preset.gan.text_dim)
    mask = torch.ones(2, preset.gan.max_text_tokens, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(ours(x, tok, mask), theirs(x, tok, mask), atol=1e-5)
    # apply: every photo edited at its own size, from the adapter folder or the file
    edited = tmp_path / "edited"
    argv = ["apply", "--lora", str(out / "adapter"), "--images", str(pairs / "A"),
            "--out", str(edited), "--model", str(run)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    names = sorted(p.name for p in edited.glob("*.png"))
    assert names == [f"p{i}.png" for i in range(6)]
    with Image.open(edited / "p0.png") as im:
        assert im.size == (48, 40)
    one = tmp_path / "one"
    argv = ["apply", "--lora", str(out / "lora.safetensors"), "--images", str(pairs / "A" / "p0.png"),
            "--out", str(one), "--model", str(run), "--mode", "resize"]  # fmt: skip
    assert main(argv) == 0 and (one / "p0.png").is_file()
    # picked: every candidate scored on the training pairs, the lowest one trained from; its
    # step 0 is that candidate's own quality (the generated one's when it is chosen)
    picked = tmp_path / "picked"
    argv = ["new-concept", "--pairs", str(pairs), "--text", text, "--out", str(picked),
            "--model", str(run), "--init", "picked", "--steps", "2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    ps = json.loads((picked / "summary.json").read_text())
    l1 = ps["picked"]["l1"]
    assert {"generated", "nearest", "blend0.5", "scale2"} <= set(l1)  # the run has a dataset/
    assert ps["init"] == "picked" and ps["picked"]["chosen"] == min(l1, key=l1.get)
    if ps["picked"]["chosen"] == "generated":
        assert ps["psnr_step0"] == pytest.approx(summary["psnr_step0"])


@pytest.mark.ray
def test_picked_start_is_the_chosen_candidate_with_or_without_retrieval(run, tmp_path):
    """new-concept's picked start is exactly the candidate with the lowest loss on the training
    pairs, rebuilt here from the public pieces; a model without its training LoRAs (as shipped)
    chooses among the generated LoRA and its enlargements only."""
    from weightgen.adapt import ModelDir, _initial
    from weightgen.concepts.sources import open_pair_folder
    from weightgen.diffusion import load_generator
    from weightgen.gan import load_base
    from weightgen.initial import WeightBaselines, initial_loras, pick_candidates
    from weightgen.text import get_encoder

    text = "quantise the colours to three levels and tint the photo green"
    state, preset = load_base(run / "base")
    source = open_pair_folder(_pairs_folder(tmp_path / "pairs"), text)
    train = source.pairs(preset.concept.n_train_pairs, preset.gan.image_size, seed=0,
                         split="collect")  # fmt: skip
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    (gen,), _ = initial_loras("generated", [text], sample=preset.sample,
                              bundle=load_generator(run / "generator"), encoder=enc,
                              pairs=[tuple(t[:8] for t in train)])  # fmt: skip
    near = WeightBaselines.from_dataset(str(run / "dataset")).nearest(enc.encode([text]).pooled[0])
    shipped = tmp_path / "shipped"  # base and generator, no dataset/
    shipped.mkdir()
    for part in ("base", "generator"):
        (shipped / part).symlink_to(run / part)
    for root, nearest in ((run, near[0]), (shipped, None)):
        lora, picked = _initial("picked", text, ModelDir.find(root), preset, enc,
                                enc.encode([text]), train, state)  # fmt: skip
        want = pick_candidates(gen, nearest)
        assert set(picked["l1"]) == set(want)
        assert picked["chosen"] == min(picked["l1"], key=picked["l1"].get)
        chosen = want[picked["chosen"]]
        assert lora.keys() == chosen.keys()
        assert all(torch.allclose(lora[k], chosen[k], atol=1e-6) for k in lora)
    assert set(picked["l1"]) == {"generated", "scale1.5", "scale2"}


@pytest.mark.slow
@pytest.mark.ray
def test_new_concept_and_apply_reject_bad_input_in_one_line(run, tmp_path, capsys):
    import shutil

    from PIL import Image

    text = "tint it green"
    good = _pairs_folder(tmp_path / "good")
    out = tmp_path / "out"

    def new(pairs, **kw):
        argv = ["new-concept", "--pairs", str(pairs), "--text", text, "--out", str(kw.get("out", out)),
                "--model", str(run), "--init", "zero", "--steps", "2"]  # fmt: skip
        return main(argv)

    cases = []
    d = shutil.copytree(good, tmp_path / "no-b")
    shutil.rmtree(d / "B")
    cases.append((d, "B is missing"))
    d = shutil.copytree(good, tmp_path / "unmatched")
    (d / "B" / "p0.png").rename(d / "B" / "q0.png")
    cases.append((d, "names differ"))
    cases.append((_pairs_folder(tmp_path / "few", n=3), "needs at least 5"))
    d = shutil.copytree(good, tmp_path / "not-image")
    (d / "A" / "p1.png").write_bytes(b"not a png")
    (d / "B" / "p1.png").write_bytes(b"not a png")
    cases.append((d, "not an image"))
    d = shutil.copytree(good, tmp_path / "mixed")
    Image.new("RGB", (40, 48)).save(d / "B" / "p2.png")
    cases.append((d, "must be aligned at one size"))
    for pairs, needle in cases:
        rc = new(pairs)
        _one_line_error(capsys, rc, needle)
        assert not out.exists(), needle  # nothing written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(capsys, new(good, out=blocker / "sub"), "file")
    # a LoRA of another layout (rank 4 for a rank-8 base): one line, nothing written
    from weightgen.api import LoRA
    from weightgen.gan import build_concept_model
    from weightgen.gan.lora import lora_state_dict

    p4 = _preset(rank=4)
    other = LoRA(lora_state_dict(build_concept_model("lora", p4.gan, p4.lora, E2GANGenerator(p4.gan).state_dict())), text)  # fmt: skip
    other.save(tmp_path / "other.safetensors")
    argv = ["apply", "--lora", str(tmp_path / "other.safetensors"), "--images", str(good / "A"),
            "--out", str(tmp_path / "e"), "--model", str(run)]  # fmt: skip
    _one_line_error(capsys, main(argv), "does not fit this base")
    assert not (tmp_path / "e").exists()
    argv = ["apply", "--lora", str(tmp_path / "none.safetensors"), "--images", str(good / "A"),
            "--out", str(tmp_path / "e"), "--model", str(run)]  # fmt: skip
    _one_line_error(capsys, main(argv), "no LoRA at")
    (tmp_path / "bad-img").mkdir()
    (tmp_path / "bad-img" / "x.png").write_bytes(b"nope")
    argv = ["apply", "--lora", str(tmp_path / "other.safetensors"), "--images",
            str(tmp_path / "bad-img"), "--out", str(tmp_path / "e"), "--model", str(run)]  # fmt: skip
    _one_line_error(capsys, main(argv), "not an image")


@pytest.mark.slow
@pytest.mark.ray
def test_readme_python_example_runs(run, tmp_path, monkeypatch):
    """The README's Python example, as printed there, on the miniature run."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    photo = _pairs_folder(tmp_path / "pairs") / "A" / "p0.png"
    monkeypatch.chdir(tmp_path)
    code = block.replace('"models/tiny"', repr(str(run))).replace('"photo.jpg"', repr(str(photo)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["edited"][0].shape == (3, 40, 48)
    assert (tmp_path / "sepia-adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_collect_from_a_pairs_root_and_an_editor(run, tmp_path, capsys):
    """`weightgen collect --pairs-root DIR --editor PATH --instruction TEXT`: the user's folder and a
    local diffusers editing pipeline collected like catalogue concepts, through Ray."""
    from test_sources import _tiny_pipeline

    from weightgen.collect import Ledger
    from weightgen.data import load_all, open_storage

    root = tmp_path / "mine"
    _pairs_folder(root / "green-poster")
    (root / "green-poster" / "text.txt").write_text("quantise the colours and tint them green\n")
    _tiny_pipeline(tmp_path / "ip2p")
    argv = ["collect", "--base", str(run / "base"), "--out", str(tmp_path / "ds"),
            "--pairs-root", str(root), "--editor", str(tmp_path / "ip2p"),
            "--instruction", "make it look like winter", "--workers", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "/2 concepts" in out, out  # only the two sources: no catalogue concept joins them
    want = {"pairs-green-poster-s0", "edit-make-it-look-like-winter-s0"}
    ledger = Ledger(open_storage(str(tmp_path / "ds")))
    status = {ledger.read(cid, st)["key"]: st for cid, st in ledger.scan().items()}
    assert set(status) == want and set(status.values()) <= {"done", "rejected"}
    keys, blocks, _, metas = load_all(str(tmp_path / "ds"))
    assert set(keys) == {k for k, st in status.items() if st == "done"}
    assert {m["text"] for m in metas} <= {"quantise the colours and tint them green",
                                          "make it look like winter"}  # fmt: skip
    # a concept folder without its sentence: one line, exit 2, no data set started
    (root / "no-text").mkdir()
    argv = ["collect", "--base", str(run / "base"), "--out", str(tmp_path / "ds2"),
            "--pairs-root", str(root)]  # fmt: skip
    _one_line_error(capsys, main(argv), "no-text has no text.txt")
    assert not (tmp_path / "ds2").exists()
    argv = ["collect", "--base", str(run / "base"), "--out", str(tmp_path / "ds2"),
            "--instruction", "add fog"]  # fmt: skip
    _one_line_error(capsys, main(argv), "--editor PATH and --instruction")
    assert not (tmp_path / "ds2").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_export_model_ships_what_the_commands_read(run, tmp_path, capsys):
    """`weightgen export-model`: base, generator and a model card, no checkpoints or data set;
    the exported model generates what the run does; over the size limit nothing is written."""
    from weightgen.api import WeightGenerator

    out = tmp_path / "models" / "tiny"
    assert main(["export-model", "--run", str(run), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "concepts.txt", "base/generator.safetensors", "generator/generator.json",
            "generator/layout.json", "generator/stats.safetensors"} <= files  # fmt: skip
    assert not any(f.startswith(("generator/checkpoints", "dataset")) for f in files)
    collected = out.joinpath("concepts.txt").read_text().split()
    assert collected and set(collected) <= set(IDS)
    assert f"{len(collected)} concepts" in out.joinpath("README.md").read_text()
    a = WeightGenerator.from_pretrained(run).generate("make it warmer", seed=3)
    b = WeightGenerator.from_pretrained(out).generate("make it warmer", seed=3)
    for k in a.state:  # the same weights and noise: the same LoRA (up to CPU kernel rounding)
        torch.testing.assert_close(a.state[k], b.state[k])
    # refused: over the size limit, or a run without a generator; the output stays as it was
    before = sorted(files)
    argv = ["export-model", "--run", str(run), "--out", str(out), "--max-mb", "0.01"]
    _one_line_error(capsys, main(argv), "over the 0.01 MB limit")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == before
    (tmp_path / "half" / "base").mkdir(parents=True)
    argv = ["export-model", "--run", str(tmp_path / "half"), "--out", str(tmp_path / "m2")]
    _one_line_error(capsys, main(argv), "export a finished run")
    assert not (tmp_path / "m2").exists() and not list(tmp_path.glob(".m2.partial-*"))


def test_editor_modes_keep_detail_and_cover_every_pixel():
    """A pointwise edit (the model adds a constant) through both modes of weightgen.apply.Editor:
    tiles cover every pixel of any size exactly; resize mode adds the change at full resolution,
    so the photo's own detail stays."""
    from weightgen.apply import Editor

    class AddTenth(torch.nn.Module):  # in the model's [-1, 1] units: +0.2 is +0.1 in [0, 1]
        def forward(self, x, tokens, mask):
            return x + 0.2

    ed = Editor(AddTenth(), torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool), size=16)
    img = 0.8 * torch.rand(3, 37, 50, generator=torch.Generator().manual_seed(0))
    for mode in ("tile", "resize"):
        torch.testing.assert_close(ed.edit(img, mode), img + 0.1, atol=1e-5, rtol=0)
    small = 0.8 * torch.rand(3, 9, 12)  # under one tile: padded, then cropped back
    torch.testing.assert_close(ed.edit(small, "tile"), small + 0.1, atol=1e-5, rtol=0)
