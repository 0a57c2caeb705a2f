"""Storage (local) and webdataset shards: round trip, atomicity, manifest-last, corruption, no pickle."""

import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from weightgen.data import (
    DatasetError,
    LocalStorage,
    Manifest,
    ShardWriter,
    StorageError,
    WeightSample,
    iter_samples,
    load_all,
    open_storage,
    read_manifest,
)
from weightgen.data.storage import TMP_MARK

N, S, D, L = 3, 8, 5, 4
HASH = "layout-abc123"


def make_sample(i: int, *, tokens: bool = False) -> WeightSample:
    rng = np.random.default_rng(i)
    return WeightSample(
        key=f"c{i:04d}-s0",
        blocks=rng.standard_normal((N, S)).astype(np.float32),
        text=rng.standard_normal(D).astype(np.float32),
        tokens=rng.standard_normal((L, D)).astype(np.float16) if tokens else None,
        meta={"concept": f"concept {i}", "seed": 0, "metrics": {"l1": np.float32(0.5)}},
    )


def write_dataset(out, n: int = 5, maxcount: int = 2, **kw):
    samples = [make_sample(i, tokens=i % 2 == 0) for i in range(n)]
    with ShardWriter(
        out, layout_hash=HASH, block_size=S, num_blocks=N, maxcount=maxcount, **kw
    ) as w:
        for s in samples:
            w.write(s)
    return samples, w.close()


def test_round_trip_multiple_shards(tmp_path):
    samples, m = write_dataset(tmp_path / "ds", n=5, maxcount=2, extra={"text_model": "mini"})
    assert [s.name for s in m.shards] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert [s.samples for s in m.shards] == [2, 2, 1] and m.num_samples == 5
    assert read_manifest(tmp_path / "ds") == m
    assert m.extra == {"text_model": "mini"}

    got = list(iter_samples(str(tmp_path / "ds"), expected_layout_hash=HASH))
    assert [g.key for g in got] == [s.key for s in samples]
    for g, s in zip(got, samples):
        assert g.blocks.dtype == np.float32 and np.array_equal(g.blocks, s.blocks)
        assert np.array_equal(g.text, s.text)
        if s.tokens is None:
            assert g.tokens is None
        else:
            assert g.tokens.dtype == np.float16 and np.array_equal(g.tokens, s.tokens)
        assert g.meta["layout_hash"] == HASH and g.meta["metrics"]["l1"] == 0.5

    keys, blocks, text, metas = load_all(tmp_path / "ds")
    assert blocks.shape == (5, N, S) and text.shape == (5, D) and len(metas) == 5
    assert np.array_equal(blocks[3], samples[3].blocks)

    sub = list(iter_samples(tmp_path / "ds", shards=["shard-000001.tar"]))
    assert [g.key for g in sub] == [samples[2].key, samples[3].key]


def test_shards_are_reproducible(tmp_path):
    _, m1 = write_dataset(tmp_path / "a")
    _, m2 = write_dataset(tmp_path / "b")
    assert [s.sha256 for s in m1.shards] == [s.sha256 for s in m2.shards]


def test_manifest_json_contract(tmp_path):
    write_dataset(tmp_path, n=3)
    d = json.loads((tmp_path / "manifest.json").read_text())
    for k in ("layout_hash", "block_size", "num_blocks", "num_samples", "shards"):
        assert k in d
    assert set(d["shards"][0]) == {"name", "samples", "bytes", "sha256"}
    assert Manifest.from_json(Manifest.from_json(json.dumps(d)).to_json()).num_samples == 3


def test_exception_writes_no_manifest(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(KeyError):
        with ShardWriter(out, layout_hash=HASH, block_size=S, num_blocks=N, maxcount=2) as w:
            for i in range(3):
                w.write(make_sample(i))
            raise KeyError("boom")
    assert not (out / "manifest.json").exists()
    assert (out / "shard-000000.tar").exists()  # published but unlisted
    with pytest.raises(DatasetError, match=r"no manifest\.json at .*ds"):
        list(iter_samples(out))


def test_rewrite_removes_stale_manifest(tmp_path):
    write_dataset(tmp_path, n=3)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, layout_hash=HASH, block_size=S, num_blocks=N) as w:
            w.write(make_sample(7))
            raise RuntimeError("interrupted")
    with pytest.raises(DatasetError, match="no manifest"):
        read_manifest(tmp_path)


def test_no_temp_files_left(tmp_path):
    write_dataset(tmp_path, n=4, maxcount=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["manifest.json", "shard-000000.tar", "shard-000001.tar"]
    st = LocalStorage(tmp_path)
    (tmp_path / f".x.tar{TMP_MARK}123").write_bytes(b"partial")
    assert st.list() == names


def test_corrupt_shard_names_it(tmp_path):
    write_dataset(tmp_path, n=4, maxcount=2)
    p = tmp_path / "shard-000001.tar"
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"shard-000001\.tar.*sha256"):
        list(iter_samples(tmp_path))
    # without verification the damage is still caught by decoding, or the samples differ
    p.write_bytes(bytes(data[:1000]))
    with pytest.raises(DatasetError, match=r"shard-000001\.tar"):
        list(iter_samples(tmp_path, verify=False))


def test_missing_shard(tmp_path):
    write_dataset(tmp_path, n=4, maxcount=2)
    (tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(DatasetError, match=r"shard-000000\.tar.*missing"):
        list(iter_samples(tmp_path))


def test_corrupt_manifest(tmp_path):
    write_dataset(tmp_path, n=2)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json at"):
        read_manifest(tmp_path)


def test_layout_hash_mismatch(tmp_path):
    write_dataset(tmp_path, n=2)
    with pytest.raises(DatasetError, match="layout hash"):
        list(iter_samples(tmp_path, expected_layout_hash="other"))
    bad = make_sample(0)
    bad.meta["layout_hash"] = "other"
    with ShardWriter(tmp_path / "w", layout_hash=HASH, block_size=S, num_blocks=N) as w:
        with pytest.raises(ValueError, match="layout_hash"):
            w.write(bad)


def test_sample_layout_hash_vs_manifest(tmp_path):
    write_dataset(tmp_path, n=2)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["layout_hash"] = "other"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=r"shard-000000\.tar.*layout hash"):
        list(iter_samples(tmp_path))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("blocks", np.zeros((N, S + 1), np.float32), "shape"),
        ("blocks", np.zeros((N * S,), np.float32), "dims"),
        ("blocks", np.full((N, S), np.nan, np.float32), "NaN"),
        ("blocks", np.full((N, S), 1e300), "NaN or Inf"),
        ("blocks", np.zeros((N, S), complex), "castable"),
        ("text", np.array([np.inf] * D, np.float32), "NaN"),
        ("key", "c1.s0", "key"),
    ],
)
def test_bad_sample_rejected(tmp_path, field, value, match):
    s = make_sample(1)
    setattr(s, field, value)
    with ShardWriter(tmp_path, layout_hash=HASH, block_size=S, num_blocks=N) as w:
        with pytest.raises(ValueError, match=match):
            w.write(s)
        w.write(make_sample(2))
    assert read_manifest(tmp_path).num_samples == 1


def test_duplicate_key_rejected(tmp_path):
    with ShardWriter(tmp_path, layout_hash=HASH, block_size=S, num_blocks=N) as w:
        w.write(make_sample(1))
        with pytest.raises(ValueError, match="twice"):
            w.write(make_sample(1))


def test_unwritable_output(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="afile"):
        ShardWriter(tmp_path / "afile" / "ds", layout_hash=HASH, block_size=S, num_blocks=N)
    with pytest.raises(StorageError, match="afile"):
        open_storage(str(tmp_path / "afile" / "ds")).check_writable()
    with pytest.raises(StorageError, match="afile"):
        LocalStorage(tmp_path).write_bytes("afile/x.json", b"{}")


def test_file_uri(tmp_path):
    uri = "file://" + str(tmp_path / "ds")
    st = open_storage(uri)
    assert isinstance(st, LocalStorage) and st.local_path() == tmp_path / "ds"
    samples, _ = write_dataset(uri, n=3)
    keys, blocks, _, _ = load_all(uri)
    assert keys == [s.key for s in samples]
    assert np.array_equal(blocks[2], samples[2].blocks)


def test_local_storage_ops(tmp_path):
    st = open_storage(str(tmp_path))
    st.write_bytes("a/b/c.bin", b"123")
    st.write_bytes("top.json", b"{}")
    assert st.exists("a/b/c.bin") and not st.exists("a/b/zz")
    assert st.list() == ["a/b/c.bin", "top.json"] and st.list("a/") == ["a/b/c.bin"]
    assert st.child("a").read_bytes("b/c.bin") == b"123"
    assert st.child("a").local_path("b/c.bin") == tmp_path / "a" / "b" / "c.bin"
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    st.write_file("up/src.bin", src)
    assert st.read_bytes("up/src.bin") == b"x" * 1000
    st.delete("top.json")
    st.delete("top.json")
    assert not st.exists("top.json")
    with pytest.raises(StorageError, match="nope"):
        st.read_bytes("nope")
    with pytest.raises(StorageError, match=r"\.\."):
        st.read_bytes("../etc/passwd")
    with pytest.raises(StorageError, match="unsupported"):
        open_storage("gs://bucket/x")


def _tar_with(member_bytes: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, b in member_bytes.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
    return buf.getvalue()


def test_pickled_npy_rejected(tmp_path):
    """A shard whose blocks.npy is an object array (needs pickle) is refused, never unpickled."""
    write_dataset(tmp_path, n=1)
    obj = np.empty((N, S), dtype=object)
    obj[:] = 0.0
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    meta = json.dumps({"layout_hash": HASH}).encode()
    good_text = io.BytesIO()
    np.save(good_text, np.zeros(D, np.float32))
    data = _tar_with(
        {"k0.blocks.npy": buf.getvalue(), "k0.meta.json": meta, "k0.text.npy": good_text.getvalue()}
    )
    (tmp_path / "shard-000000.tar").write_bytes(data)
    with pytest.raises(DatasetError, match=r"shard-000000\.tar.*blocks\.npy.*not a plain"):
        list(iter_samples(tmp_path, verify=False))
    # a raw pickle posing as .npy
    data = _tar_with(
        {
            "k0.blocks.npy": pickle.dumps(np.zeros((N, S), np.float32)),
            "k0.meta.json": meta,
            "k0.text.npy": good_text.getvalue(),
        }
    )
    (tmp_path / "shard-000000.tar").write_bytes(data)
    with pytest.raises(DatasetError, match=r"shard-000000\.tar.*not a plain"):
        list(iter_samples(tmp_path, verify=False))


def test_empty_dataset(tmp_path):
    with ShardWriter(tmp_path, layout_hash=HASH, block_size=S, num_blocks=N) as w:
        pass
    assert w.close().num_samples == 0
    keys, blocks, text, metas = load_all(tmp_path)
    assert keys == [] and blocks.shape == (0, N, S)
