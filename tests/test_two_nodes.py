"""A two-node launch on one machine: cluster/launch/torchrun.sh started twice (`NNODES=2`, one rank
per "node", c10d rendezvous on 127.0.0.1), as every node of a cluster would run it; the job trains
under DeepSpeed ZeRO-2, is resumed by a second two-node launch (`RESUME=1`), and its losses match
a single-node two-rank run of the same steps."""

import os
import sys

import pytest
from _configs import PLAIN, sets
from _procs import finish, free_port, start, summary
from test_train import make_synthetic_dataset
from test_train_dist import REPO, RTOL, losses, torchrun

from weightgen.train import complete_checkpoints

pytestmark = [pytest.mark.dist, pytest.mark.slow]

TRAIN = [
    "--config", PLAIN, *sets(generator__zero_stage=2, generator__batch_size=8,
                             generator__log_every=1, generator__ckpt_every=3),
    "--no-progress",
]  # fmt: skip


def two_nodes(data, out, *extra: str, resume: bool = False, timeout: float = 300) -> dict:
    """Both nodes' launches side by side; returns rank 0's summary (printed by node 0 only)."""
    port = free_port()
    env = {**os.environ, "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(port), RDZV_ID=f"two-nodes-{port}", PYTHON=sys.executable)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(NCCL_SOCKET_IFNAME="lo", RESUME="1" if resume else "0")
    cmd = ["bash", str(REPO / "cluster" / "launch" / "torchrun.sh"), "jobs/train.py"]
    cmd += ["--data", str(data), "--out", str(out), *TRAIN, *extra]
    procs = [start(cmd, env) for _ in range(2)]
    outputs = finish(procs, timeout)
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-4000:]
    return summary(*outputs)  # global rank 0 only


def test_two_node_launch_trains_and_resumes(tmp_path):
    data = tmp_path / "ds"
    make_synthetic_dataset(data)
    run = tmp_path / "run"

    first = two_nodes(data, run, *sets(generator__max_steps=6))
    assert first["world_size"] == 2 and first["zero_stage"] == 2 and first["steps"] == 6
    assert [s for s, _ in complete_checkpoints(run)] == [3, 6]
    shards = sorted(p.name for p in (run / "checkpoints" / "step-0000006").glob("zero_pp_rank_*"))
    assert len(shards) == 2  # each node wrote its rank's optimizer partition

    resumed = two_nodes(data, run, *sets(generator__max_steps=9), resume=True)
    assert resumed["resumed_from"] == 6 and resumed["steps"] == 9
    got = losses(run)
    assert sorted(got) == list(range(1, 10))

    # the same job as two ranks on one node, straight through: the same losses step by step
    straight = torchrun(data, tmp_path / "straight", *sets(generator__max_steps=9))
    assert straight["world_size"] == 2
    want = losses(tmp_path / "straight")
    for step in range(1, 10):
        assert got[step] == pytest.approx(want[step], rel=RTOL), step
