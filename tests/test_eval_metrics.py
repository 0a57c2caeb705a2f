import pytest

from weightgen.eval.metrics import median_or_none, speedups, time_to_target

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
    assert median_or_none([1.0, None, 3.0]) is None
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
