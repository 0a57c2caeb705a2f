"""S3Storage against a real S3 server (moto's threaded server on 127.0.0.1)."""

import pickle

import numpy as np
import pytest

from weightgen.data import (
    DatasetError,
    S3Storage,
    ShardWriter,
    StorageError,
    WeightSample,
    iter_samples,
    load_all,
    open_storage,
    read_manifest,
)

pytestmark = pytest.mark.s3

N, S, D = 2, 16, 4
HASH = "layout-s3"


@pytest.fixture(scope="module")
def s3_server():
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


def sample(i: int) -> WeightSample:
    rng = np.random.default_rng(i)
    return WeightSample(
        key=f"c{i:04d}-s1",
        blocks=rng.standard_normal((N, S)).astype(np.float32),
        text=rng.standard_normal(D).astype(np.float32),
        meta={"concept": f"c{i}", "seed": 1},
    )


def test_dataset_round_trip(s3_env):
    uri = "s3://wg-data/runs/ds1"
    samples = [sample(i) for i in range(5)]
    with ShardWriter(uri, layout_hash=HASH, block_size=S, num_blocks=N, maxcount=2) as w:
        for s in samples:
            w.write(s)
    m = w.close()
    st = open_storage(uri)
    assert isinstance(st, S3Storage) and st.local_path() is None
    assert st.list() == ["manifest.json"] + [s.name for s in m.shards]
    assert read_manifest(uri) == m
    keys, blocks, text, _ = load_all(uri, expected_layout_hash=HASH)
    assert keys == [s.key for s in samples]
    assert np.array_equal(blocks, np.stack([s.blocks for s in samples]))
    assert np.array_equal(text[4], samples[4].text)

    st.write_bytes(m.shards[1].name, b"garbage")
    with pytest.raises(DatasetError, match=r"s3://wg-data/runs/ds1/shard-000001\.tar"):
        list(iter_samples(uri))


def test_storage_ops(s3_env, tmp_path):
    st = open_storage("s3://wg-ops/pre/fix")
    st.check_writable()  # creates the bucket
    st.write_bytes("a/b.json", b"{}")
    src = tmp_path / "f.bin"
    src.write_bytes(b"z" * 4096)
    st.write_file("c.bin", src)
    assert st.exists("a/b.json") and not st.exists("a/nope")
    assert st.list() == ["a/b.json", "c.bin"] and st.list("a/") == ["a/b.json"]
    assert st.child("a").read_bytes("b.json") == b"{}"
    assert st.child("a").uri == "s3://wg-ops/pre/fix/a"
    assert pickle.loads(pickle.dumps(st)).read_bytes("c.bin") == b"z" * 4096
    st.delete("c.bin")
    assert st.list() == ["a/b.json"]
    with pytest.raises(StorageError, match=r"s3://wg-ops/pre/fix/missing\.bin"):
        st.read_bytes("missing.bin")
    with pytest.raises(DatasetError, match="no manifest.json at s3://wg-ops/pre/fix"):
        read_manifest(st)


def test_missing_bucket_error(s3_env):
    with pytest.raises(StorageError, match="wg-absent"):
        open_storage("s3://wg-absent/x").read_bytes("k")


# --------------------------------------------------------------------------------------------
# SeaweedFS (the real Go server): multipart uploads, a server crash in the middle of uploads
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    from _s3 import weed_server

    with weed_server(tmp_path_factory.mktemp("weed")) as server:
        yield server


@pytest.fixture
def weed_env(weed, monkeypatch):
    from _s3 import set_s3_env

    set_s3_env(monkeypatch, weed)
    return weed


MIB = 1 << 20


def test_multipart_upload_and_atomic_publish(weed_env, tmp_path):
    st = S3Storage("wg-multipart", "ds", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    st.check_writable()
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 11 * MIB, dtype=np.uint8).tobytes()
    src = tmp_path / "big.tar"
    src.write_bytes(big)
    st.write_file("shard-000000.tar", src)
    st.write_bytes("shard-000001.tar", big[: 6 * MIB])
    st.write_bytes("small.json", b"{}")
    head = st._client.head_object(Bucket="wg-multipart", Key="ds/shard-000000.tar")
    assert head["ContentLength"] == 11 * MIB and head["ETag"].strip('"').endswith("-3")
    assert st.read_bytes("shard-000000.tar") == big
    assert st.read_bytes("shard-000001.tar") == big[: 6 * MIB]
    # each object written once, under its own key: no other key, no unfinished upload
    raw = st._client.list_objects_v2(Bucket="wg-multipart", Prefix="ds/")["Contents"]
    assert sorted(o["Key"] for o in raw) == [
        "ds/shard-000000.tar",
        "ds/shard-000001.tar",
        "ds/small.json",
    ]
    assert not st._client.list_multipart_uploads(Bucket="wg-multipart").get("Uploads")


def test_restart_outlasting_botocore_is_retried_by_storage(weed_env, monkeypatch):
    """botocore's retries are counted in attempts (3 by default in its standard mode, jitter from
    50 ms): a server down for 2 s outlasts them. S3Storage's own loop then carries the write."""
    import threading
    import time

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    st = S3Storage("wg-outlast", "ds", retry_seconds=60)
    st.check_writable()
    bare = S3Storage("wg-outlast", "ds", retry_seconds=0)  # botocore's retries alone
    weed_env.stop()
    restart = threading.Thread(target=lambda: (time.sleep(2.0), weed_env.start()))
    try:
        with pytest.raises(StorageError, match="unreachable") as info:
            bare.write_bytes("k", b"x")
        assert "\n" not in str(info.value) and bare.botocore_retries == 3
        restart.start()
        st.write_bytes("k", b"carried")
    finally:
        if restart.is_alive() or restart.ident is not None:
            restart.join(90)
        if weed_env.proc is None:
            weed_env.start()
    assert st.retries > 0 and st.botocore_retries >= 3
    assert st.read_bytes("k") == b"carried" and st.list() == ["k"]


def test_body_cut_mid_read_is_retried(weed_env, monkeypatch):
    """botocore retries a request, not a response body already streaming: a GET cut off after
    64 KiB fails through botocore alone; read_bytes (s3transfer's download) fetches it again."""
    from _s3 import CuttingProxy
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError

    data = np.random.default_rng(2).integers(0, 256, 1 * MIB, dtype=np.uint8).tobytes()
    S3Storage("wg-cut").check_writable()
    S3Storage("wg-cut").write_bytes("big.bin", data)
    proxy = CuttingProxy(("127.0.0.1", weed_env.ports["s3"][0]))
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        st = S3Storage("wg-cut")
        proxy.cut(1, after=64 * 1024)
        body = st._client.get_object(Bucket="wg-cut", Key="big.bin")["Body"]
        with pytest.raises((ResponseStreamingError, IncompleteReadError)):
            body.read()
        proxy.cut(1, after=64 * 1024)
        assert st.read_bytes("big.bin") == data
        assert proxy.cuts == 2 and st.retries == 0  # s3transfer fetched it again, not our loop
    finally:
        proxy.close()


def test_server_crash_during_uploads_is_retried(weed_env, tmp_path):
    import threading

    st = S3Storage("wg-restart", "ds", multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    st.check_writable()
    rng = np.random.default_rng(1)
    payloads = {}
    for i in range(10):
        n = 6 * MIB if i % 3 == 0 else 200_000 + i  # every third one goes multipart
        payloads[f"obj-{i:02d}.bin"] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    started = threading.Event()
    errors = []

    def upload():
        try:
            for k, (key, data) in enumerate(payloads.items()):
                if k == 2:
                    started.set()
                if k % 2:
                    path = tmp_path / key
                    path.write_bytes(data)
                    st.write_file(key, path)
                else:
                    st.write_bytes(key, data)
        except Exception as e:  # reported below
            errors.append(e)
        finally:
            started.set()

    t = threading.Thread(target=upload)
    t.start()
    assert started.wait(60)
    weed_env.restart(down_s=1.5)
    t.join(120)
    assert not t.is_alive() and not errors, errors
    assert st.retries + st.botocore_retries > 0  # the crash was seen and retried
    assert st.list() == sorted(payloads)  # nothing lost, nothing twice
    assert not st._client.list_multipart_uploads(Bucket="wg-restart").get("Uploads")
    for key, data in payloads.items():
        assert st.read_bytes(key) == data


def test_base_folder_from_s3(s3_env, tmp_path):
    import torch

    from weightgen.collect.driver import _local_base
    from weightgen.config import GANConfig, Preset
    from weightgen.gan import E2GANGenerator, load_base, save_base
    from weightgen.gan.base import BaseNotFoundError

    preset = Preset(name="t", gan=GANConfig(image_size=16, channels=8))
    save_base(tmp_path / "base", E2GANGenerator(preset.gan).state_dict(), preset, {"steps": 0})
    st = open_storage("s3://wg-base/runs/base")
    st.check_writable()
    for f in (tmp_path / "base").iterdir():
        st.write_file(f.name, f)
    with _local_base("s3://wg-base/runs/base") as local:
        state, p = load_base(local)
    assert p.gan.image_size == 16
    assert all(torch.equal(v, load_base(tmp_path / "base")[0][k]) for k, v in state.items())
    st.delete("metrics.json")
    with pytest.raises(BaseNotFoundError, match=r"s3://wg-base/runs/base \(metrics\.json"):
        with _local_base("s3://wg-base/runs/base"):
            pass
