"""cluster/launch/gpu_check.sh, the prepared GPU run of the scale measurements, run on CPU at tiny
shapes: every stage runs and writes what the GPU run will (MFU rows with and without
torch.compile, ZeRO 1/2/3 throughput beside the ZeRO paper's model-state floor)."""

import json
import os
from pathlib import Path

import pytest
from _procs import run

pytestmark = [pytest.mark.dist, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu_at_tiny_shapes(tmp_path):
    import sys

    env = {**os.environ, "SIZE": "tiny", "BLOCKS": "8", "SAMPLES": "16", "BATCH": "4",
           "STEPS": "2", "OUT": str(tmp_path / "out"), "DS_ACCELERATOR": "cpu",
           "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}  # fmt: skip
    run(["bash", str(REPO / "cluster" / "launch" / "gpu_check.sh")], env, cwd=tmp_path, timeout=900)
    out = tmp_path / "out"
    eager, compiled = (json.loads((out / f).read_text()) for f in ("mfu.json", "mfu-compile.json"))
    assert [r["compile"] for r in eager + compiled] == [False, True]
    for row in eager + compiled:
        assert row["flops_per_step"] > 0 and row["step_s"] > 0 and row["batch"] == 4
    assert compiled[0]["flops_per_step"] == eager[0]["flops_per_step"]  # the same model's FLOPs
    zero = json.loads((out / "zero.json").read_text())
    for stage in (1, 2, 3):
        assert zero[f"zero{stage}_1proc"] > 0
        assert zero[f"zero{stage}_1proc_plan_gib"] > 0
    # one process: ZeRO partitions over one rank, so every stage keeps the same model states
    assert zero["zero1_1proc_plan_gib"] == zero["zero3_1proc_plan_gib"]
    assert not (out / "kernels").exists()  # the kernel bandwidth run is for a GPU only
