"""Two-process training under torchrun (gloo, DeepSpeed ZeRO-2): checkpoint, resume, same losses.

The first multi-process DeepSpeed run on a machine JIT-builds a shm comm op (~35 s, cached in
~/.cache/torch_extensions); later runs take ~10 s each.
"""

import json
import os
import sys
from pathlib import Path

import pytest
from _configs import PLAIN, sets
from _procs import run, summary
from test_train import make_synthetic_dataset

from weightgen.diffusion import load_generator
from weightgen.train import complete_checkpoints

pytestmark = [pytest.mark.dist, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# losses are all-reduced means over the two ranks; the resumed run restores module, optimizer,
# LR schedule and data order exactly, so it matches bit for bit here (tolerance for other BLAS)
RTOL = 1e-5


def torchrun(data: Path, out: Path, *extra: str, timeout: float = 240) -> dict:
    cmd = [
        *TORCHRUN, str(REPO / "jobs" / "train.py"), "--data", str(data), "--out", str(out),
        "--config", PLAIN, *sets(generator__zero_stage=2, generator__batch_size=8,
                                 generator__log_every=1, generator__ckpt_every=3),
        "--no-progress", *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return summary(run(cmd, env, cwd=REPO, timeout=timeout))


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_two_ranks_zero2_checkpoint_resume(tmp_path):
    data = tmp_path / "ds"
    make_synthetic_dataset(data)
    run = tmp_path / "run"

    first = torchrun(data, run, *sets(generator__max_steps=6))
    assert first["world_size"] == 2 and first["zero_stage"] == 2 and first["steps"] == 6
    assert [s for s, _ in complete_checkpoints(run)] == [3, 6]
    ranks = sorted(p.name for p in (run / "checkpoints" / "step-0000006").glob("zero_pp_rank_*"))
    assert len(ranks) == 2  # optimizer state partitioned over both ranks

    resumed = torchrun(data, run, *sets(generator__max_steps=10), "--resume")
    assert resumed["resumed_from"] == 6 and resumed["steps"] == 10
    assert [s for s, _ in complete_checkpoints(run)] == [9, 10]
    got = losses(run)
    assert sorted(got) == list(range(1, 11))

    straight = torchrun(data, tmp_path / "straight", *sets(generator__max_steps=10))
    assert straight["resumed_from"] == 0
    want = losses(tmp_path / "straight")
    for step in range(1, 11):
        assert got[step] == pytest.approx(want[step], rel=RTOL), step

    model, layout, _, meta, _ = load_generator(run)
    assert meta["summary"]["world_size"] == 2 and model.config.num_blocks == layout.num_blocks
