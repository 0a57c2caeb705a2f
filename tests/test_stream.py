"""weightgen.train.stream: shards split by rank and worker, resampled, epochs of N samples,
deterministic per (seed, rank, worker, epoch), normalisation on the device equal to the in-memory
data set's."""

from pathlib import Path

import pytest
import torch
from test_train import make_synthetic_dataset

from weightgen.train import load_train_data
from weightgen.train.stream import ShardStream, normalize_on_device, split


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream") / "ds"
    make_synthetic_dataset(root, n=40)  # shards of 16, 16, 8 samples
    return root


def pooled_of(root: Path, shards: list[str]) -> set[bytes]:
    from weightgen.data import iter_samples

    return {s.text.tobytes() for s in iter_samples(root, shards=shards)}


def test_split():
    assert split(list("abc"), 0, 2) == ["a", "c"] and split(list("abc"), 1, 2) == ["b"]
    assert split(list("ab"), 1, 4) == ["a", "b"]  # fewer shards than parts: every part reads all


def test_rank_split_epoch_length_and_determinism(data):
    s0 = ShardStream(data, epoch_samples=24, rank=0, world=2, seed=3)
    s1 = ShardStream(data, epoch_samples=24, rank=1, world=2, seed=3)
    assert len(s0) == 12 and s0.node_shards == ["shard-000000.tar", "shard-000002.tar"]
    assert s1.node_shards == ["shard-000001.tar"]
    items = list(s0)
    assert len(items) == 12
    blocks, pooled, tokens, mask = items[0]
    assert blocks.dtype == torch.float32 and blocks.ndim == 2
    assert tokens.shape == (16, pooled.shape[0]) and mask.dtype == torch.bool and mask.any()
    allowed = pooled_of(data, s0.node_shards)
    assert all(p.numpy().tobytes() in allowed for _, p, _, _ in items)
    assert all(p.numpy().tobytes() in pooled_of(data, s1.node_shards) for _, p, _, _ in s1)
    again = [p for _, p, _, _ in s0]
    assert all(torch.equal(a, b) for a, (_, b, _, _) in zip(again, items))  # same epoch, same order
    s0.set_epoch(1)
    assert not all(torch.equal(a, b) for a, (_, b, _, _) in zip(again, s0))


def test_workers_share_the_epoch(data):
    stream = ShardStream(data, epoch_samples=10, rank=0, world=1, seed=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert len(list(loader)) == 10  # 5 + 5: an epoch is a number of samples


def test_normalize_on_device_matches_in_memory_data(data):
    td = load_train_data(data)
    stream = ShardStream(data, epoch_samples=4, rank=0, world=1)
    blocks, pooled, _, _ = next(iter(stream))
    x = normalize_on_device(blocks[None], td.layout, td.stats, "cpu")[0]  # (N, S)
    i = int(torch.nonzero((td.pooled == pooled).all(dim=1))[0])
    torch.testing.assert_close(x, td.x0[i])


@pytest.mark.s3
def test_streams_from_s3(data, tmp_path, monkeypatch):
    from _s3 import set_s3_env, weed_server

    from weightgen.data import open_storage

    with weed_server(tmp_path / "weed") as server:
        set_s3_env(monkeypatch, server)
        st = open_storage("s3://wg-stream/ds")
        st.check_writable()
        for p in sorted(data.iterdir()):
            st.write_file(p.name, p)
        local = list(ShardStream(data, epoch_samples=6, rank=1, world=2, seed=1))
        remote = list(ShardStream("s3://wg-stream/ds", epoch_samples=6, rank=1, world=2, seed=1))
        assert len(remote) == 3
        assert all(torch.equal(a[0], b[0]) for a, b in zip(local, remote))
