"""cluster.bench's projection of a measured collection to a GPU cluster: the tightest of the
driver, compute and storage limits, from a result file and a data set's shard parts."""

import json

import pytest

from cluster.bench import main, project

DAY = 86_400.0
RESULT = {
    "pipeline": {"seconds": 10.0, "jobs": 1000},  # 10 ms per job through the driver
    "real": {"1": {"median_task_train_seconds": 20.0}},
    "upload": {"s3_mb_s": 50.0},
}


def test_projection_takes_the_tightest_limit():
    pr = project(RESULT, gpus=64, bytes_per_job=100e3)
    want = {"driver": DAY / 0.01, "compute": 64 * DAY / 20.0, "storage": DAY * 50e6 / 100e3}
    assert pr["limits_concepts_per_day"] == pytest.approx(want)
    assert pr["bound_by"] == "compute" and pr["concepts_per_day"] == pytest.approx(want["compute"])
    assert pr["assumptions"]  # every figure carries its assumptions
    # a cluster large enough is bound by its driver instead; huge shards by storage
    assert project(RESULT, gpus=10_000, bytes_per_job=100e3)["bound_by"] == "driver"
    assert project(RESULT, gpus=64, bytes_per_job=1e9)["bound_by"] == "storage"


def test_projection_command_reads_a_result_and_sizes_jobs_from_a_data_set(tmp_path, capsys):
    (tmp_path / "ds" / "parts").mkdir(parents=True)
    (tmp_path / "ds" / "parts" / "a.tar").write_bytes(b"x" * 1000)
    (tmp_path / "ds" / "parts" / "b.tar").write_bytes(b"x" * 3000)
    (tmp_path / "r.json").write_text(json.dumps(RESULT))
    out = tmp_path / "scale.json"
    argv = ["--project", str(tmp_path / "r.json"), "--dataset", str(tmp_path / "ds"),
            "--gpus", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    got = json.loads(out.read_text())
    assert got["measurement"] == RESULT and got["projection"]["gpus"] == 8
    assert got["projection"]["inputs"]["bytes_per_job"] == 2000
    assert got["command"].startswith("python -m cluster.bench")
    assert "8 GPUs:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no parts"):
        main(["--project", str(tmp_path / "r.json"), "--dataset", str(tmp_path)])
