"""Collection on a real Ray cluster (`ray start --head`, stopped by its PID) writing to a real S3
server (SeaweedFS), with faults: a worker killed mid-task, the S3 server crashing during uploads, a
driver killed mid-run; and `ray job submit` of jobs/collect.py end to end."""

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch
from _s3 import free_ports, weed_server

from cluster.synthetic import synthetic_job
from weightgen.collect import DONE, Ledger, collect, plan
from weightgen.config import CollectConfig, ConceptTrainConfig, GANConfig, Preset
from weightgen.data import load_all, open_storage, read_manifest
from weightgen.gan import E2GANGenerator, save_base

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IDS = ["tone-010", "tint-016", "blur-003"]


def _preset() -> Preset:
    return Preset(
        name="test",
        gan=GANConfig(image_size=32, channels=8),
        concept=ConceptTrainConfig(
            steps=10, batch_size=4, lr=5e-3, eval_every=5, n_train_pairs=8, n_eval_pairs=4
        ),
        collect=CollectConfig(shard_maxcount=2, max_in_flight=4, min_psnr=5.0, max_psnr_drop=5.0),
    )


class RayHead:
    """`ray start --head --block` in the foreground: its PID owns every Ray process it starts."""

    def __init__(self, env: dict):
        self.tmp = Path(tempfile.mkdtemp(prefix="wgray-", dir="/tmp"))  # short: socket paths
        self.port, self.dash, self.client, *self.agent_ports = free_ports(7)
        self.env = env
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dash}"
        self.proc = None

    def start(self, timeout: float = 120) -> None:
        argv = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash}",
            f"--ray-client-server-port={self.client}",
            # the agents' fixed default ports (52365 and others) are taken when another Ray runs
            # on the machine (e.g. a local collection); the job agent then never registers and
            # `ray job submit` answers "No available agent"
            *(
                f"--{name}={port}"
                for name, port in zip(
                    (
                        "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port",
                        "runtime-env-agent-port",
                        "metrics-export-port",
                    ),
                    self.agent_ports,
                )
            ),
            f"--temp-dir={self.tmp}",
            "--disable-usage-stats",
        ]
        log = open(self.tmp / "head.log", "wb")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.tmp / "head.log").read_text()[-3000:])
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=1).close()
                return
            time.sleep(0.2)
        raise RuntimeError(f"Ray head not up within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        self.proc.send_signal(signal.SIGTERM)  # drains, then stops every process it started
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(kids, timeout=10)
        for p in alive:  # stragglers, by PID
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(Ray head, SeaweedFS). The head's processes inherit the S3 settings, as nodes would."""
    import ray

    root = tmp_path_factory.mktemp("cluster")
    with weed_server(root / "weed") as weed, pytest.MonkeyPatch.context() as mp:
        s3 = {**weed.env(), "WEIGHTGEN_S3_RETRY_SECONDS": "60"}
        for k, v in s3.items():
            mp.setenv(k, v)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        env["RAY_AUTH_MODE"] = "disabled"
        head = RayHead(env)
        try:
            head.start()
            ray.init(address=head.address, log_to_driver=False)
            yield head, weed
        finally:
            ray.shutdown()
            head.stop()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("run") / "base"
    save_base(p, E2GANGenerator(_preset().gan).state_dict(), _preset(), {"steps": 0})
    return p


def _keys_once(uri: str, expected: list[str]) -> None:
    keys, *_ = load_all(uri)  # sha256 of every shard verified
    assert sorted(keys) == sorted(expected), "every planned id exactly once"


def test_worker_killed_mid_task_is_retried(cluster, base_dir, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    victims = {"tone-010-s1", "blur-003-s0"}

    def runner(job, **kw):
        marker = markers / job.key
        if job.key in victims and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-task, first attempt only
        return synthetic_job(job, **kw)

    uri = "s3://wg-cluster/killed"
    s = collect(
        out=uri, base=base_dir, concept_ids=IDS, seeds_per_concept=2, runner=runner, progress=False
    )
    expected = [f"{c}-s{i}" for c in IDS for i in (0, 1)]
    assert s.accepted == 6 and not s.rejected and s.workers == 2
    assert set(s.retried) == victims  # the ledger's attempt markers show the retries
    assert {p.name for p in markers.iterdir()} == victims
    assert read_manifest(uri).num_samples == 6
    _keys_once(uri, expected)


def test_s3_server_crash_during_collection(cluster, base_dir):
    import threading

    _, weed = cluster
    uri = "s3://wg-cluster/crash"
    jobs = plan(IDS, 3, _preset(), "")  # only for the count below
    ledger = Ledger(open_storage(uri))

    def crash_when_busy():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if sum(st == DONE for st in ledger.scan().values()) >= 2:
                    break
            time.sleep(0.1)
        weed.restart(down_s=1.5)

    t = threading.Thread(target=crash_when_busy)
    t.start()
    try:
        s = collect(
            out=uri,
            base=base_dir,
            concept_ids=IDS,
            seeds_per_concept=3,
            runner=functools.partial(synthetic_job, seconds=0.4),
            progress=False,
        )
    finally:
        t.join(90)
    assert weed.starts == 2 and s.ran + s.skipped == len(jobs)
    assert s.accepted == 9 and not s.rejected
    _keys_once(uri, [f"{c}-s{i}" for c in IDS for i in range(3)])
    parts = open_storage(uri).list("parts/")
    assert len(parts) == 9  # one per id: nothing written twice under another name


def test_killed_driver_resumes_from_ledger(cluster, base_dir, tmp_path):
    head, _ = cluster
    out = tmp_path / "ds"
    args = dict(out=str(out), base=str(base_dir), concept_ids=IDS, seeds_per_concept=2)
    script = (
        "import functools, ray\n"
        "from weightgen.collect import collect\n"
        "from cluster.synthetic import synthetic_job\n"
        f"ray.init(address={head.address!r}, log_to_driver=False)\n"
        f"collect(**{args!r}, progress=False,\n"
        "        runner=functools.partial(synthetic_job, seconds=1.5))\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        ledger = Ledger(open_storage(str(out)))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and driver.poll() is None:
            if out.exists() and sum(s == DONE for s in ledger.scan().values()) >= 2:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the driver finished before it could be interrupted"
    finally:
        driver.kill()  # SIGKILL, by PID: no clean-up code runs
        driver.wait(30)
    done_before = sum(s == DONE for s in ledger.scan().values())
    assert 2 <= done_before < 6 and not (out / "manifest.json").exists()

    s = collect(**args, runner=functools.partial(synthetic_job, seconds=0.1), progress=False)
    assert s.skipped >= done_before and s.ran + s.duplicates <= 6 - done_before
    assert s.accepted == 6
    _keys_once(str(out), [f"{c}-s{i}" for c in IDS for i in (0, 1)])


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """The job's working dir: a copy of what it needs, so that edits others make to the tree while
    Ray zips it cannot break the upload."""
    root = tmp_path_factory.mktemp("snapshot")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in ("cluster", "jobs", "weightgen"):
        shutil.copytree(REPO / name, root / name, ignore=skip)
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def _submit(head: RayHead, cwd: Path, *args: str) -> str:
    env = {**head.env, "RAY_ADDRESS": head.dashboard}
    argv = [str(BIN / "ray"), "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--"]
    deadline = time.monotonic() + 60  # safety net: the agent normally answers within seconds
    while True:
        r = subprocess.run(
            argv + ["python", "jobs/collect.py", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        # a head whose dashboard agent is still starting answers "No available agent to submit
        # job, please try again later" (seen on a loaded 2-core machine): Ray's own advice
        if r.returncode == 0 or "No available agent" not in r.stderr:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(3.0)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_ray_job_submit_end_to_end(cluster, base_dir, snapshot):
    head, _ = cluster
    uri = "s3://wg-cluster/job"
    common = ["--base", str(base_dir), "--out", uri]
    out = _submit(head, snapshot, *common, "--concept", IDS[0], "--concept", IDS[1])
    assert "collected 2/2 concepts" in out
    # a larger plan: only the new concept trains (one attempt marker per id, ever)
    out = _submit(
        head, snapshot, *common, "--concept", IDS[0], "--concept", IDS[1], "--concept", IDS[2]
    )
    assert "collected 3/3 concepts" in out
    st = open_storage(uri)
    ids = [pj.id for pj in plan(IDS, 1, _preset(), _base_sha(base_dir))]
    assert [Ledger(st).attempts(i) for i in ids] == [1, 1, 1]
    keys, blocks, _, metas = load_all(uri)
    assert sorted(keys) == sorted(f"{c}-s0" for c in IDS)
    assert all(m["metrics"]["psnr_final"] > m["metrics"]["psnr_step0"] for m in metas)
    assert json.loads(st.read_bytes("dataset.json"))["preset"] == "test"


def _base_sha(base_dir: Path) -> str:
    from weightgen.collect.driver import file_sha256

    return file_sha256(base_dir / "generator.safetensors")
