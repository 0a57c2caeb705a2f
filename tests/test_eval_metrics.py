import math

import pytest

from weightgen.eval.metrics import (
    collapsed,
    eval_schedule,
    log_step_quality,
    median_or_none,
    paired_difference,
    plateau_quality,
    plateaued,
    speedups,
    time_to_target,
)

CURVE = [
    {"step": 0, "time_s": 0.0, "psnr": 10.0, "ssim": 0.2},
    {"step": 25, "time_s": 1.0, "psnr": 18.0, "ssim": 0.5},
    {"step": 50, "time_s": 2.0, "psnr": 21.0, "ssim": 0.7},
    {"step": 75, "time_s": 3.0, "psnr": 20.5, "ssim": 0.8},
]


def test_time_to_target_first_crossing():
    assert time_to_target(CURVE, 20.0) == (2.0, 50)
    assert time_to_target(CURVE, 10.0) == (0.0, 0)  # already there at step 0
    assert time_to_target(CURVE, 0.75, metric="ssim") == (3.0, 75)
    assert time_to_target(CURVE, 18.0, offset_s=0.5) == (1.5, 25)  # sampling time counts


def test_never_reaching_is_none_not_a_number():
    assert time_to_target(CURVE, 30.0) == (None, None)
    assert median_or_none([1.0, None, 3.0]) == 3.0  # "never" sorts last, not dropped
    assert median_or_none([1.0, None, None]) is None  # the median concept never got there
    assert median_or_none([1.0, 2.0, None, None]) is None  # mean of 2.0 and never
    assert median_or_none([1.0, 2.0, 4.0, None]) == 3.0
    assert median_or_none([]) is None
    assert median_or_none([1.0, 2.0, 4.0]) == 2.0


def test_speedups_median_and_spread():
    s = speedups([10.0, 20.0, 8.0], [1.0, 4.0, 2.0])
    assert s["median"] == pytest.approx(5.0) and s["min"] == 4.0 and s["max_finite"] == 10.0
    assert (s["n"], s["of"]) == (3, 3)


def test_speedups_count_a_method_that_never_gets_there():
    # the fast method missing the target on 2 of 3 concepts drags the median to 0, not up
    s = speedups([10.0, 20.0, 8.0], [1.0, None, None])
    assert s["median"] == 0.0 and s["fast_never"] == 2
    # the slow method never reaching: only a lower bound, so no number
    s = speedups([None, None, 8.0], [1.0, 2.0, 2.0])
    assert s["median"] is None and s["slow_never"] == 2 and s["max_finite"] == 4.0
    assert speedups([None], [None])["median"] is None
    # the slow method there at step 0 (0 s): a ratio of 0 for the fast one, but not a "never"
    s = speedups([0.0, 0.0, 8.0], [0.5, 0.5, 2.0])
    assert s["median"] == 0.0 and s["min"] == 0.0 and (s["fast_never"], s["slow_never"]) == (0, 0)


def test_paired_difference_compares_concept_by_concept():
    # medians of the two methods: 20 vs 21 (other looks better), but concept by concept other
    # ends lower on two of three
    ref, other = [10.0, 20.0, 30.0], [9.5, 19.0, 21.0 + 20.0]
    d = paired_difference(ref, other)
    assert d["median_diff"] == pytest.approx(-0.5) and d["share_at_least"] == pytest.approx(1 / 3)
    assert d["n"] == 3
    assert paired_difference([1.0], [1.0])["share_at_least"] == 1.0  # a tie counts as at least
    assert paired_difference([], [])["median_diff"] is None
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        paired_difference([1.0, 2.0], [1.0])


def _curve(psnrs, dt=1.0, every=10):
    return [
        {"step": i * every, "time_s": i * dt, "psnr": p, "ssim": p / 40}
        for i, p in enumerate(psnrs)
    ]


def test_summarise_and_report_contract(tmp_path):
    import json

    from weightgen.eval.report import summarise, write_report

    runs = {
        "a": {
            "scratch": {"curve": _curve([8, 15, 20, 24, 24, 24])},  # target 24 dB, reached at 3 s
            "lora-zero": {"curve": _curve([13, 18, 21, 22, 22, 22])},  # never reaches 24
            "generated": {"curve": _curve([16, 24, 25, 25, 25, 25], dt=0.5), "offset_s": 0.1},
        },
        "b": {
            "scratch": {"curve": _curve([8, 12, 14, 18, 18, 18])},
            "lora-zero": {"curve": _curve([13, 15, 18, 19, 19, 19])},
            "generated": {
                "curve": _curve([19, 20, 21, 22, 22, 22], dt=0.5),
                "offset_s": 0.1,
            },  # at step 0
        },
    }
    step0 = {
        c: {m: {"psnr": r["curve"][0]["psnr"], "ssim": 0.5} for m, r in v.items()}
        for c, v in runs.items()
    }
    for c in step0:
        step0[c]["base"] = {"psnr": 13.0, "ssim": 0.5}
    s = summarise(step0, runs)
    a = s["per_concept"]["a"]["methods"]
    assert a["generated"]["time_to_target_s"] == 0.6 and a["generated"]["steps_to_target"] == 10
    assert a["lora-zero"]["time_to_target_s"] is None and a["lora-zero"]["steps_to_target"] is None
    assert s["per_concept"]["b"]["methods"]["generated"]["time_to_target_s"] == 0.1
    assert s["methods"]["lora-zero"]["time_to_target_s"] is None  # never on concept a: no number
    assert s["methods"]["generated"]["psnr_step0"] == 17.5
    # scratch/generated: a 3/0.6 = 5, b 3/0.1 = 30 -> median 17.5; lora-zero never reached on a
    assert s["speedup"]["vs_scratch"] == pytest.approx(17.5)
    assert s["speedup"]["vs_lora_zero_spread"]["slow_never"] == 1
    # final PSNR paired by concept: generated 25 vs scratch 24 (a), 22 vs 18 (b)
    fv = s["methods"]["generated"]["final_vs"]
    assert fv["scratch"]["median_diff"] == pytest.approx(2.5) and fv["scratch"]["n"] == 2
    assert fv["lora-zero"]["share_at_least"] == 1.0
    assert "final_vs" not in s["methods"]["base"] and "scratch" not in s["methods"]["scratch"].get(
        "final_vs", {}
    )
    write_report(tmp_path, s, runs=runs)
    rep = json.loads((tmp_path / "report.json").read_text())
    for m in ("scratch", "lora-zero", "generated", "base"):
        assert {
            "psnr_step0",
            "ssim_step0",
            "psnr_final",
            "ssim_final",
            "time_to_target_s",
            "steps_to_target",
        } <= set(rep["methods"][m])
    assert {"vs_scratch", "vs_lora_zero"} <= set(rep["speedup"])
    for png in ("curves.png", "step0.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report.md").read_text()
    assert "| generated |" in md and "| generated | +2.50 (100%) | +3.00 (100%) |" in md


def test_final_quality_is_the_median_of_the_last_three():
    c = _curve([8, 20, 24, 30, 23])  # one lucky measurement neither sets nor spoils it
    assert plateau_quality(c) == 24
    assert plateau_quality(_curve([9])) == 9
    with pytest.raises(ValueError):
        plateau_quality([])


def _steps_curve(points):
    return [{"step": s, "time_s": s * 0.1, "psnr": q, "ssim": 0.5} for s, q in points]


def test_log_step_quality_rewards_early_progress_and_counts_a_late_collapse():
    # flat curves score their level; step 0 is left out (no log there)
    assert log_step_quality(_steps_curve([(0, 5.0), (1, 20.0), (100, 20.0)])) == pytest.approx(20.0)
    # linear in log(step) from 20 at step 1 to 30 at step 100: the mean is the midpoint
    line = [(s, 20.0 + 10.0 * math.log(s) / math.log(100))
            for s in (1, 10, 100)]  # fmt: skip
    assert log_step_quality(_steps_curve(line)) == pytest.approx(25.0)
    # same final quality, one gets there at step 10, the other at step 90: the early one wins
    fast = _steps_curve([(0, 10.0), (1, 12.0), (10, 28.0), (90, 28.0), (600, 28.0)])
    slow = _steps_curve([(0, 10.0), (1, 12.0), (10, 14.0), (90, 28.0), (600, 28.0)])
    assert log_step_quality(fast) > log_step_quality(slow) + 3
    # a run that peaks higher, then falls to 9 dB over the last half of its budget: on a log axis
    # that half is a small share of the area, so the score alone may still prefer it; `collapsed`
    # flags it (and the sweep ranks such rates last, test below)
    crash = _steps_curve([(1, 20.0), (10, 30.0), (300, 31.0), (400, 10.0), (500, 9.0), (600, 9.0)])
    steady = _steps_curve([(1, 20.0), (10, 27.0), (300, 28.0), (400, 28.0), (600, 28.0)])
    assert log_step_quality(crash) < 30.0
    assert collapsed(crash) and not collapsed(steady)
    assert not collapsed(_steps_curve([(1, 20.0), (10, 30.0), (20, 28.0), (30, 28.0), (40, 28.0)]))
    with pytest.raises(ValueError, match="step 1"):
        log_step_quality(_steps_curve([(0, 5.0)]))


def test_sweep_chooses_the_best_rate_that_never_collapsed():
    from weightgen.eval.sweep import choose_rate

    cells = {
        "0.001": {"score": 24.0, "final": 28.0, "collapsed": 0},
        "0.003": {"score": 26.0, "final": 28.5, "collapsed": 0},
        "0.01": {"score": 27.0, "final": 15.0, "collapsed": 2},  # best score, but it diverges
    }
    assert choose_rate(cells) == 0.003
    # every rate collapsed somewhere: the best score among them all
    worst = {k: {**v, "collapsed": 1} for k, v in cells.items()}
    assert choose_rate(worst) == 0.01


def test_plateau_rule():
    rising = _curve([10, 15, 18, 20, 21, 22], every=100)
    assert not plateaued(rising, patience_steps=200, min_gain=0.2)
    flat = _curve([10, 15, 20, 20.1, 19.9, 20.05], every=100)
    assert plateaued(flat, patience_steps=200, min_gain=0.2)
    # a window longer than the history never declares a plateau
    assert not plateaued(flat[:2], patience_steps=200)


def test_eval_schedule_is_dense_early_and_ends_at_the_budget():
    s = eval_schedule(300)
    assert s[:5] == [1, 2, 3, 4, 5] and s[-1] == 300 and 75 in s and 60 not in s
    assert s == sorted(set(s))
    assert eval_schedule(7) == [1, 2, 3, 4, 5, 6, 7]
    # no gap overstates a crossing from step 5 on by more than ~20%
    assert all((b - a) / a <= 0.2 for a, b in zip(s, s[1:]) if 5 <= a < 50)
    # the earlier schedule's steps are kept, so a curve can be re-read on them
    assert {1, 2, 5, 10, 15, 20, 30, 40, 50} <= set(s)


def test_logged_train_seconds_sums_every_resumed_segment(tmp_path):
    """The generator's training time is read from its log, resumed segments included; a log that
    does not cover every step gives None (the caller then falls back to the export's summary)."""
    import json

    from weightgen.eval.cost import logged_train_seconds

    rows = [  # 10 steps of batch 4 per row: 40 samples at 20/s = 2 s; a resumed segment at 10/s
        {"step": 10, "samples_per_s": 20.0},
        {"step": 20, "samples_per_s": 20.0},
        {"step": 30, "samples_per_s": 10.0},
    ]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert logged_train_seconds(tmp_path, 30, 4) == pytest.approx(2 + 2 + 4)
    assert logged_train_seconds(tmp_path, 40, 4) is None  # the log stops short of the export
    (tmp_path / "train_log.jsonl").write_text(json.dumps(rows[2]) + "\n")
    assert logged_train_seconds(tmp_path, 30, 4) == pytest.approx(12.0)  # one row from step 0
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))
    assert logged_train_seconds(tmp_path, 10, 4) is None  # out of order: not one run's log
    assert logged_train_seconds(tmp_path / "none", 30, 4) is None


def test_bench_config_rejects_bad_settings_and_adds_refined_and_blended_only_when_asked():
    from weightgen.config import CONTROLS, RETRIEVAL, TRAINED, BenchConfig
    from weightgen.errors import ConfigError

    every = (*TRAINED, *RETRIEVAL, *CONTROLS)
    assert BenchConfig().trained == every
    assert BenchConfig(refine_strength=0.5).trained == (*every, "refined")
    assert BenchConfig(refine_strength=0.5, lrs={"refined": 1e-3}).lrs == {"refined": 1e-3}
    assert BenchConfig(blend=0.5, refine_strength=0.5).trained == (*every, "refined", "blended")
    assert BenchConfig(blend=[0.25, 0.75]).blend == (0.25, 0.75)
    # a chosen subset keeps the report order, and scratch and lora-zero (the targets) always
    assert BenchConfig(methods=("nearest", "generated")).trained == (
        "scratch",
        "lora-zero",
        "generated",
        "nearest",
    )
    for bad, msg in (
        (dict(methods=("blended",)), "unknown bench.methods"),  # blended not asked for
        (dict(split="test"), "bench.split must be one of"),
        (dict(split="train"), "bench.split must be one of"),  # training concepts: never evaluated
        (dict(knn_k=()), "knn_k must be"),
        (dict(refine_strength=0.0), "refine_strength must be in"),
        (dict(refine_strength=1.2), "refine_strength must be in"),
        (dict(lrs={"refined": 1e-3}), "unknown method"),  # refined not asked for
        (dict(lrs={"nope": 1e-3}), "unknown method"),
        (dict(lrs={"blended": 1e-3}), "unknown method"),  # blended not asked for
        (dict(blend=0.0), r"blend must be in \(0, 1\)"),
        (dict(blend=1.0), r"blend must be in \(0, 1\)"),
        (dict(lora_steps=0), "lora_steps must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=msg):
            BenchConfig(**bad)


def test_ablation_names_are_checked_and_refine_takes_a_strength():
    from weightgen.errors import ConfigError
    from weightgen.eval.ablations import blend_weight, check_ablations, refine_strength

    assert check_ablations(["refine0.3", "ddim10", "refine.7", "concepts50", "ddim10"]) == [
        "refine0.3",
        "ddim10",
        "refine.7",
        "concepts50",
    ]
    assert refine_strength("refine0.3") == 0.3 and refine_strength("refine1") == 1.0
    assert refine_strength("ddim10") is None
    with pytest.raises(ConfigError, match=r"strength must be in \(0, 1\], got 1.5"):
        check_ablations(["refine1.5"])
    with pytest.raises(ConfigError, match="unknown ablation 'refinex'.*refineS.*blendA"):
        check_ablations(["refinex"])
    assert check_ablations(["blend0.25", "blend.75"]) == ["blend0.25", "blend.75"]
    assert check_ablations(["neighbors4"]) == ["neighbors4"]
    with pytest.raises(ConfigError, match="retrieve at least 1 neighbour"):
        check_ablations(["neighbors0"])
    assert blend_weight("blend0.25") == 0.25 and blend_weight("refine0.3") is None
    for bad in ("blend0", "blend1", "blend1.5"):
        with pytest.raises(ConfigError, match=r"blend weight must be in \(0, 1\)"):
            check_ablations([bad])


def test_combined_ablations_train_their_levers_together(tmp_path, monkeypatch):
    import weightgen.train
    from weightgen.errors import ConfigError
    from weightgen.eval.ablations import (
        NEIGHBOR_FAMILY_DROP,
        ablation_generator,
        check_ablations,
        combined,
    )

    assert check_ablations(["neighbors4+pairs"]) == ["neighbors4+pairs"]
    assert combined("neighbors4+pairs+no-text-noise") == {
        "neighbors": 4,
        "neighbor_family_drop": NEIGHBOR_FAMILY_DROP,
        "pair_features": True,
        "text_noise": 0.0,
    }
    assert combined("pairs") is None
    for bad, msg in (
        ("ddim10+pairs", "'ddim10' cannot be combined"),  # sampling-time
        ("block128+pairs", "'block128' cannot be combined"),  # its own data set
        ("nope+pairs", "'nope' cannot be combined"),
        ("neighbors0+pairs", "retrieve at least 1 neighbour"),
        ("text-noise+no-text-noise", r"two parts set \['text_noise'\]"),
    ):
        with pytest.raises(ConfigError, match=msg):
            check_ablations([bad])
    # the variant generator is the reference's recipe with every part's fields
    seen = {}
    monkeypatch.setattr(
        weightgen.train, "train_generator", lambda data, out, cfg, resume: seen.update(cfg=cfg)
    )
    ref = {"train_config": {"max_steps": 7, "seed": 3, "text_noise": 0.5}}
    gen = ablation_generator(tmp_path, tmp_path / "out", "neighbors4+pairs", ref)
    assert gen == tmp_path / "out" / "ablations" / "neighbors4+pairs" / "generator"
    cfg = seen["cfg"]
    assert (cfg.neighbors, cfg.pair_features, cfg.stream) == (4, True, False)
    assert (cfg.max_steps, cfg.seed, cfg.text_noise) == (7, 3, 0.5)


def test_blend_loras_is_the_weighted_mean_of_aligned_loras_and_checks_its_inputs():
    import torch

    from weightgen.initial import blend_loras

    g = torch.Generator().manual_seed(0)
    a = {
        "x.lora_A.weight": torch.randn(4, 6, generator=g),
        "x.lora_B.weight": torch.randn(6, 4, generator=g),
    }
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    mid = blend_loras(a, b, 0.25)
    for k in a:
        assert torch.allclose(mid[k], 0.25 * a[k] + 0.75 * b[k])
        assert torch.equal(blend_loras(a, b, 1.0)[k], a[k])
        assert torch.equal(blend_loras(a, b, 0.0)[k], b[k])
    assert set(mid) == set(a) and all(t.shape == a[k].shape for k, t in mid.items())
    with pytest.raises(ValueError, match=r"blend weight must be in \[0, 1\], got 1.5"):
        blend_loras(a, b, 1.5)
    with pytest.raises(ValueError, match="differ in tensors: \\['y'\\]"):
        blend_loras(a, {**b, "y": torch.zeros(1)}, 0.5)


def test_select_concepts_skips_each_familys_first_k_for_a_disjoint_set():
    from collections import Counter

    from weightgen.concepts import concepts
    from weightgen.config import BenchConfig
    from weightgen.errors import ConfigError
    from weightgen.eval.protocol import select_concepts

    first, second = select_concepts("heldout", 2), select_concepts("heldout", 2, skip=2)
    assert not {c.id for c in first} & {c.id for c in second}
    sizes = Counter(c.family for c in concepts("heldout"))
    # a family with n held-out concepts gives min(2, n - 2) to the second set, in catalogue order
    assert Counter(c.family for c in second) == {
        f: min(2, n - 2) for f, n in sizes.items() if n > 2
    }
    order = [c.id for c in concepts("heldout")]
    assert [c.id for c in second] == sorted((c.id for c in second), key=order.index)
    assert select_concepts("heldout", 1, skip=0) == select_concepts("heldout", 1)
    with pytest.raises(ConfigError, match="skip_per_family must be >= 0"):
        BenchConfig(skip_per_family=-1)
