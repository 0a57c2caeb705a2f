"""jobs/sample.py: one LoRA per text, index.json, re-runs skip what exists; one process and two
torchrun ranks (gloo) splitting the texts round-robin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _procs import free_port, run, summary
from safetensors import safe_open
from test_train import cfg, make_synthetic_dataset

from weightgen import lorafiles
from weightgen.diffusion import load_generator
from weightgen.train import train_generator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs import sample as sample_job  # noqa: E402

TEXTS = [f"make the photo {w}" for w in ("warmer", "cooler", "sepia", "darker", "blurry")]
TEXTS += ["invert the colours", "posterize to four levels"]


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    make_synthetic_dataset(root / "ds", n=16)
    out = root / "gen"
    train_generator(root / "ds", out, cfg(max_steps=2, ckpt_every=2, batch_size=4), progress=False)
    return out


def texts_file(tmp_path: Path, texts=TEXTS) -> Path:
    p = tmp_path / "texts.txt"
    p.write_text("\n".join(texts[:3]) + "\n\n" + "\n".join(texts[3:]) + "\n")  # a blank line
    return p


def check_outputs(out: Path, generator: Path, texts=TEXTS) -> None:
    index = json.loads((out / "index.json").read_text())
    assert index["num_texts"] == index["num_done"] == len(texts)
    assert [e["index"] for e in index["entries"]] == list(range(len(texts)))
    layout = load_generator(generator).layout
    for e in index["entries"]:
        assert e["text"] == texts[e["index"]]
        assert e["file"] == lorafiles.file_name(e["index"], e["text"])
        with safe_open(str(out / e["file"]), "pt") as f:
            assert f.metadata()["text"] == e["text"]
            assert sorted(f.keys()) == sorted(layout.names)
    assert len(list(out.glob("*.safetensors"))) == len(texts)


def test_one_process_writes_indexes_and_skips(generator, tmp_path, capsys):
    out = tmp_path / "loras"
    argv = ["--generator", str(generator), "--texts", str(texts_file(tmp_path)), "--out", str(out)]
    argv += ["--batch-size", "3", "--set", "sample.steps=2", "--set", "sample.guidance=1.5"]
    assert sample_job.main(argv) == 0
    first = json.loads(capsys.readouterr().out.split("summary: ")[1])
    assert first["written"] == len(TEXTS) and first["skipped"] == 0
    check_outputs(out, generator)
    rows = [json.loads(ln) for ln in (out / "index" / "rank-00000.jsonl").read_text().splitlines()]
    assert [r["batch_seed"] for r in rows[:3]] == [lorafiles.batch_seed(0, 0)] * 3

    victim = out / lorafiles.file_name(4, TEXTS[4])
    mtime = (out / lorafiles.file_name(0, TEXTS[0])).stat().st_mtime_ns
    victim.unlink()
    assert sample_job.main(argv) == 0
    again = json.loads(capsys.readouterr().out.split("summary: ")[1])
    assert again["written"] == 1 and again["skipped"] == len(TEXTS) - 1
    assert (out / lorafiles.file_name(0, TEXTS[0])).stat().st_mtime_ns == mtime  # untouched
    check_outputs(out, generator)


def test_user_errors_are_one_line(generator, tmp_path, capsys):
    argv = ["--generator", str(generator), "--texts", str(tmp_path / "none.txt")]
    assert sample_job.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: texts file") and "\n" not in err
    argv = ["--generator", str(tmp_path / "nogen"), "--texts", str(texts_file(tmp_path))]
    assert sample_job.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "no generator at" in capsys.readouterr().err


def torchrun_sample(generator: Path, texts: Path, out: Path, timeout: float = 180) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "jobs" / "sample.py"), "--generator", str(generator), "--texts", str(texts),
        "--out", str(out), "--batch-size", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return summary(run(cmd, env, cwd=REPO, timeout=timeout))  # rank 0 only


@pytest.mark.dist
def test_two_ranks_split_round_robin_and_rerun_skips(generator, tmp_path):
    out, texts = tmp_path / "loras", texts_file(tmp_path)
    first = torchrun_sample(generator, texts, out)
    assert first["world_size"] == 2 and first["written"] == len(TEXTS) and first["skipped"] == 0
    check_outputs(out, generator)
    seen = []
    for rank in (0, 1):
        part = (out / "index" / f"rank-{rank:05d}.jsonl").read_text().splitlines()
        idx = [json.loads(ln)["index"] for ln in part]
        assert all(i % 2 == rank for i in idx)
        seen += idx
    assert sorted(seen) == list(range(len(TEXTS)))  # every text exactly once

    again = torchrun_sample(generator, texts, out)
    assert again["written"] == 0 and again["skipped"] == len(TEXTS)
    check_outputs(out, generator)


@pytest.mark.dist
def test_launch_script_c10d_rendezvous(generator, tmp_path):
    """cluster/launch/torchrun.sh on one node: env.sh + c10d rendezvous on 127.0.0.1."""
    port = free_port()
    out, texts = tmp_path / "loras", texts_file(tmp_path)
    launch = REPO / "cluster" / "launch"
    for script in ("env.sh", "torchrun.sh", "train.sbatch"):
        subprocess.run(["bash", "-n", str(launch / script)], check=True)
    env = {**os.environ, "NNODES": "1", "NPROC_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(port), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.update(NCCL_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    cmd = ["bash", str(launch / "torchrun.sh"), "jobs/sample.py", "--generator", str(generator)]
    cmd += ["--texts", str(texts), "--out", str(out), "--batch-size", "4"]
    done = summary(run(cmd, env, timeout=180))
    assert done["world_size"] == 2 and done["written"] == len(TEXTS)
    check_outputs(out, generator)


@pytest.mark.s3
def test_one_process_to_s3(generator, tmp_path, monkeypatch, capsys):
    from _s3 import set_s3_env, weed_server

    from weightgen.data import open_storage

    with weed_server(tmp_path / "weed") as server:
        set_s3_env(monkeypatch, server)
        uri = "s3://wg-sample/loras"
        argv = ["--generator", str(generator), "--texts", str(texts_file(tmp_path))]
        argv += ["--out", uri, "--batch-size", "4"]
        assert sample_job.main(argv) == 0
        assert '"written": 7' in capsys.readouterr().out
        st = open_storage(uri)
        index = json.loads(st.read_bytes("index.json"))
        assert index["num_done"] == len(TEXTS)
        assert {e["file"] for e in index["entries"]} <= set(st.list())
        assert sample_job.main(argv) == 0
        assert '"skipped": 7' in capsys.readouterr().out


# ------------------------------------------------------------------------------ Ray tasks


def _ray_summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.split("summary: ")[1].splitlines()[0])


@pytest.mark.ray
def test_ray_tasks_write_indexes_and_skip(generator, tmp_path, capsys):
    """A local Ray (started and stopped by the job): 7 texts in chunks of 3 = 3 tasks; the same
    files, index and weights as one process with the same batches; a re-run skips what exists."""
    import ray
    import torch
    from safetensors.torch import load_file

    texts = texts_file(tmp_path)
    base = ["--generator", str(generator), "--texts", str(texts), "--batch-size", "3"]
    ref = tmp_path / "one"
    assert sample_job.main([*base, "--out", str(ref)]) == 0
    capsys.readouterr()

    out = tmp_path / "loras"
    argv = [*base, "--out", str(out), "--ray", "--workers", "2", "--chunk-size", "3"]
    assert sample_job.main(argv) == 0
    first = _ray_summary(capsys)
    assert first["tasks"] == 3 and first["written"] == len(TEXTS) and first["skipped"] == 0
    assert first["ray_workers"] == 2 and first["concepts_per_s"] > 0
    assert not ray.is_initialized()  # the job stopped the Ray it started
    check_outputs(out, generator)
    parts = sorted((out / "index").glob("task-*.jsonl"))
    assert [p.name for p in parts] == [f"task-{c:05d}.jsonl" for c in range(3)]
    seen = [json.loads(ln)["index"] for p in parts for ln in p.read_text().splitlines()]
    assert sorted(seen) == list(range(len(TEXTS)))
    for i, t in enumerate(TEXTS):  # chunks of 3 = batches of 3: the one-process batches
        a, b = (load_file(str(d / lorafiles.file_name(i, t))) for d in (out, ref))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    victim = out / lorafiles.file_name(5, TEXTS[5])
    victim.unlink()
    assert sample_job.main(argv) == 0
    again = _ray_summary(capsys)
    assert again["tasks"] == 1 and again["written"] == 1 and again["skipped"] == len(TEXTS) - 1
    assert [p.name for p in (out / "index").glob("task-*.jsonl")] == ["task-00000.jsonl"]
    check_outputs(out, generator)
    assert sample_job.main(argv) == 0  # nothing to do: no Ray started, index rewritten
    done = _ray_summary(capsys)
    assert done["tasks"] == 0 and done["written"] == 0 and done["num_done"] == len(TEXTS)


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
def test_ray_tasks_on_ray_address_cluster_to_s3(generator, tmp_path, monkeypatch, capsys):
    """RAY_ADDRESS set (as inside `ray job submit`): the job joins that cluster, leaves it
    running, and its tasks write to S3."""
    import ray
    from _s3 import set_s3_env, weed_server
    from test_cluster_ray import BIN, RayHead

    from weightgen.data import open_storage

    with weed_server(tmp_path / "weed") as server:
        set_s3_env(monkeypatch, server)
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        head = RayHead({**env, "RAY_AUTH_MODE": "disabled"})
        try:
            head.start()
            monkeypatch.setenv("RAY_ADDRESS", head.address)
            uri = "s3://wg-sample-ray/loras"
            argv = ["--generator", str(generator), "--texts", str(texts_file(tmp_path))]
            argv += ["--out", uri, "--ray", "--workers", "2", "--chunk-size", "4"]
            assert sample_job.main(argv) == 0
            s = _ray_summary(capsys)
            assert s["tasks"] == 2 and s["written"] == len(TEXTS)
            assert not ray.is_initialized()  # this driver disconnected; the head runs on
            assert head.proc.poll() is None
            st = open_storage(uri)
            index = json.loads(st.read_bytes("index.json"))
            assert index["num_done"] == len(TEXTS)
            assert {e["file"] for e in index["entries"]} <= set(st.list())
            assert sample_job.main(argv) == 0
            assert _ray_summary(capsys)["skipped"] == len(TEXTS)
        finally:
            head.stop()
