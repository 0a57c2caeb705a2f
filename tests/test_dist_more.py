"""Two torchrun ranks (gloo) with DeepSpeed ZeRO 1 and 3 (ZeRO 2: test_train_dist.py), and a rank
SIGKILLed mid-run: `--resume` continues from the last complete checkpoint and follows the loss curve
of an uninterrupted run with the same seeds (bit for bit here; RTOL for other BLAS) and ends on
its weights; zero_to_fp32 export (export_fp32) of ZeRO-1 and ZeRO-3 checkpoints."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from _configs import PLAIN, sets
from _procs import start, stop
from test_train import make_synthetic_dataset
from test_train_dist import REPO, RTOL, TORCHRUN, losses, torchrun

from weightgen.diffusion import BlockDiT, load_generator
from weightgen.train import complete_checkpoints
from weightgen.train.checkpoint import export_fp32

pytestmark = [pytest.mark.dist, pytest.mark.slow]

STEPS = 24  # the uninterrupted ZeRO-1 run; checkpoints every 3 steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "ds"
    make_synthetic_dataset(root)
    return root


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, torchrun(data, out, *sets(generator__zero_stage=1, generator__max_steps=STEPS))


def check_run(out: Path, summary: dict, stage: int, steps: int) -> None:
    assert summary["world_size"] == 2 and summary["zero_stage"] == stage
    assert summary["steps"] == steps
    last = out / "checkpoints" / f"step-{steps:07d}"
    assert (last / "COMPLETE").is_file()
    assert len(list(last.rglob("zero_pp_rank_1*"))) >= 1  # rank 1 saved its partition
    model, layout, _, meta, _ = load_generator(out)
    assert meta["summary"]["zero_stage"] == stage and model.config.num_blocks == layout.num_blocks
    assert sorted(losses(out)) == list(range(1, steps + 1))


def test_zero1_two_ranks(straight):
    out, summary = straight
    check_run(out, summary, 1, STEPS)


def test_zero3_two_ranks(data, tmp_path):
    out = tmp_path / "run"
    summary = torchrun(data, out, *sets(generator__zero_stage=3, generator__max_steps=4))
    check_run(out, summary, 3, 4)
    assert all(0 < v < 10 for v in losses(out).values())  # finite, sane

    # zero_to_fp32: both ranks' ZeRO-3 partitions merged in this one process
    ema = load_generator(out).model.state_dict()
    for step in (3, 4):
        fp32 = BlockDiT.from_pretrained(str(export_fp32(out, tmp_path / f"fp32-{step}", step)))
        sd = fp32.state_dict()
        assert sd.keys() == ema.keys()
        assert all(sd[k].shape == ema[k].shape and sd[k].isfinite().all() for k in sd)
    assert any(not torch.equal(sd[k], ema[k]) for k in sd)  # raw weights, not the EMA
    with pytest.raises(FileNotFoundError):
        export_fp32(out, tmp_path / "none", step=1)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            kids.append(int(stat.parent.name))
    return kids


def test_rank_killed_mid_run_resumes_from_last_complete(data, straight, tmp_path):
    run = tmp_path / "run"
    cmd = [
        *TORCHRUN, str(REPO / "jobs" / "train.py"), "--data", str(data), "--out", str(run),
        "--config", PLAIN, *sets(generator__zero_stage=1, generator__batch_size=8,
                                 generator__log_every=1, generator__ckpt_every=3,
                                 generator__max_steps=100000),
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env["PYTHONWARNINGS"] = "ignore"
    proc = start(cmd, env, cwd=REPO, quiet=True)
    try:
        deadline = time.monotonic() + 180
        while not complete_checkpoints(run):
            assert proc.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no complete checkpoint within 180 s"
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # one rank dies; torchrun tears down the other
        assert proc.wait(timeout=60) != 0
    finally:
        stop([proc])
    last = complete_checkpoints(run)[-1][0]
    assert 3 <= last < STEPS, last  # else the kill came too late to test anything

    resumed = torchrun(
        data, run, *sets(generator__zero_stage=1, generator__max_steps=STEPS), "--resume"
    )
    assert resumed["resumed_from"] == last and resumed["steps"] == STEPS
    got, want = losses(run), losses(straight[0])
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=RTOL), step

    a = BlockDiT.from_pretrained(str(export_fp32(run, tmp_path / "a"))).state_dict()
    b = BlockDiT.from_pretrained(str(export_fp32(straight[0], tmp_path / "b"))).state_dict()
    for k in a:  # the resumed run ends on the uninterrupted run's weights
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=1e-7)
