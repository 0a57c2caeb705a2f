"""train_generator with stream=True: batches from weightgen.train.stream.StepStream (shards split by
rank and DataLoader worker, resampled, epochs of N samples), normalised on the device; resume.

"Follows the loss curve" for streaming means exact replay: the batch of step t is a pure function
of (config, rank, world, t) (see stream.py), so a run interrupted at step k and resumed from its
last complete checkpoint j <= k logs the same loss at every step as the uninterrupted run with the
same seeds. One process (gloo, DeepSpeed's CPU accelerator) reproduces it bit for bit; RTOL (as in
test_train_dist) leaves room for other BLAS builds.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _configs import sets
from test_train import cfg, log_rows, make_synthetic_dataset, one_line
from test_train_dist import RTOL, losses, torchrun

from weightgen.diffusion import load_generator
from weightgen.train import TrainError, complete_checkpoints, load_train_data, train_generator
from weightgen.train.stream import ShardStream, StepStream, normalize_on_device


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdata") / "ds"
    make_synthetic_dataset(root)  # 48 samples in shards of 16
    return root


def scfg(**kw):
    # 3 steps per epoch (24 samples / global batch 8); 2 DataLoader workers = 2 stream parts
    base = dict(stream=True, epoch_samples=24, num_workers=2, shuffle_buffer=8)
    return cfg(**{**base, **kw})


def step_batches(data: Path, start: int, stop: int, parts: int, rank=0, world=1) -> list:
    shards = ShardStream(data, epoch_samples=12, seed=5, rank=rank, world=world, shuffle_buffer=8)
    ds = StepStream(shards, batch=4, steps_per_epoch=3, start=start, stop=stop, parts=parts)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=parts if parts > 1 else 0)
    return list(loader)


@pytest.mark.parametrize("parts", [1, 2])
def test_step_stream_replays_from_any_step(dataset, parts):
    straight = step_batches(dataset, 0, 8, parts)
    assert len(straight) == 8
    blocks, pooled, tokens, mask = straight[0]
    assert blocks.shape[0] == pooled.shape[0] == tokens.shape[0] == mask.shape[0] == 4
    for start in (2, 4):  # mid-epoch and the start of an epoch
        resumed = step_batches(dataset, start, 8, parts)
        assert len(resumed) == 8 - start
        for a, b in zip(straight[start:], resumed):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    epochs = [torch.cat([b[1] for b in straight[e * 3 : e * 3 + 3]]) for e in (0, 1)]
    assert not torch.equal(epochs[0], epochs[1])  # a new epoch reseeds the shard draws


def test_step_stream_splits_by_rank(dataset):
    from weightgen.data import iter_samples

    for rank in (0, 1):
        names = ShardStream(dataset, epoch_samples=8, rank=rank, world=2).node_shards
        allowed = {s.text.tobytes() for s in iter_samples(dataset, shards=names)}
        got = step_batches(dataset, 0, 4, 2, rank=rank, world=2)
        assert all(p.numpy().tobytes() in allowed for b in got for p in b[1])


def test_stream_interrupted_and_resumed_follows_the_uninterrupted_run(dataset, tmp_path):
    straight = tmp_path / "straight"
    s = train_generator(dataset, straight, scfg(max_steps=10, ckpt_every=4), progress=False)
    assert s["stream"] and s["steps"] == 10 and s["num_samples"] == 48
    want = {r["step"]: r["loss"] for r in log_rows(straight)}
    assert sorted(want) == list(range(1, 11)) and all(np.isfinite(list(want.values())))

    run = tmp_path / "run"  # stopped after step 6: checkpoints 4 and 6, 6 torn (no COMPLETE)
    train_generator(dataset, run, scfg(max_steps=6, ckpt_every=4, keep_last=5), progress=False)
    (run / "checkpoints" / "step-0000006" / "COMPLETE").unlink()
    assert complete_checkpoints(run)[-1][0] == 4  # step 4: epoch 1, one step into it
    r = train_generator(dataset, run, scfg(max_steps=10, ckpt_every=4), resume=True, progress=False)
    assert r["resumed_from"] == 4 and r["steps"] == 10
    got = {r["step"]: r["loss"] for r in log_rows(run)}
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        assert got[step] == pytest.approx(want[step], rel=RTOL), step
    a, b = (load_generator(p).model.state_dict() for p in (run, straight))
    for k in a:  # and ends on the same (EMA) weights
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=1e-7)

    meta = json.loads((run / "generator.json").read_text())
    assert meta["max_text_tokens"] == 16 and meta["text_tokens"] is True
    assert meta["train_config"]["stream"] is True

    with pytest.raises(TrainError, match="num_workers") as e:  # would change the stream parts
        train_generator(dataset, run, scfg(max_steps=12, num_workers=1), resume=True)
    one_line(e)
    with pytest.raises(TrainError, match="stream") as e:  # in-memory batches differ
        train_generator(dataset, run, cfg(max_steps=12, num_workers=2), resume=True)
    one_line(e)


def test_stream_normalises_on_the_device_like_the_in_memory_path(dataset, tmp_path, monkeypatch):
    """The model sees the in-memory data set's normalised x0 rows, normalised by
    weightgen.blocks.normalize in the training process (not in the loader)."""
    import weightgen.train.stream as stream_mod

    calls = []
    real = stream_mod.normalize

    def spy(flat, layout, mean, std, *a, **kw):
        calls.append(flat.shape)
        return real(flat, layout, mean, std, *a, **kw)

    monkeypatch.setattr(stream_mod, "normalize", spy)
    seen = []
    import weightgen.train.trainer as trainer_mod

    real_loss = trainer_mod.diffusion_loss

    def loss_spy(engine, x0, *a, **kw):
        seen.append(x0.detach().clone())
        return real_loss(engine, x0, *a, **kw)

    monkeypatch.setattr(trainer_mod, "diffusion_loss", loss_spy)
    train_generator(dataset, tmp_path / "run", scfg(max_steps=2, num_workers=1), progress=False)
    td = load_train_data(dataset)
    assert calls == [(8, td.layout.num_params)] * 2  # one (b, P) batch per step
    rows = torch.cat(seen)  # (2b, N, S)
    for x in rows:
        assert ((td.x0 - x).abs().amax(dim=(1, 2)) < 1e-6).any()


@pytest.mark.gpu
def test_stream_batch_normalised_on_cuda_through_the_kernel(dataset, monkeypatch):
    """On a CUDA device the streamed batch is normalised by the Triton kernel (via
    weightgen.blocks.normalize's dispatch), equal to the in-memory data set's rows."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("GPU kernels need TRITON_INTERPRET=0")
    kernels = pytest.importorskip("weightgen_kernels.block_kernels")
    calls = []
    real = kernels.block_normalize

    def spy(*a, **kw):
        calls.append(a[0].device)
        return real(*a, **kw)

    monkeypatch.setattr(kernels, "block_normalize", spy)
    td = load_train_data(dataset)
    blocks, pooled, _, _ = step_batches(dataset, 0, 1, 1)[0]
    x = normalize_on_device(blocks, td.layout, td.stats, "cuda")  # (b, N, S) on the GPU
    assert calls and calls[0].type == "cuda" and x.is_cuda
    for row, p in zip(x.cpu(), pooled):
        i = int(torch.nonzero((td.pooled == p).all(dim=1))[0])
        torch.testing.assert_close(row, td.x0[i], rtol=1e-6, atol=1e-6)


@pytest.mark.s3
def test_stream_from_s3_matches_local(dataset, tmp_path, monkeypatch):
    from _s3 import set_s3_env, weed_server

    from weightgen.data import open_storage

    local = tmp_path / "local"
    train_generator(dataset, local, scfg(max_steps=3), progress=False)
    with weed_server(tmp_path / "weed") as server:
        set_s3_env(monkeypatch, server)
        st = open_storage("s3://wg-train-stream/ds")
        st.check_writable()
        for p in sorted(dataset.iterdir()):
            st.write_file(p.name, p)
        remote = tmp_path / "remote"
        s = train_generator("s3://wg-train-stream/ds", remote, scfg(max_steps=3), progress=False)
    assert s["steps"] == 3
    assert losses(remote) == pytest.approx(losses(local), rel=RTOL)  # the same batches
    meta = json.loads((remote / "generator.json").read_text())
    assert meta["dataset"] == "s3://wg-train-stream/ds"


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_stream_resume(dataset, tmp_path):
    """torchrun, 2 ranks, ZeRO-2, --stream: 6 steps then --resume to 10 == 10 straight steps."""
    # global batch 8 = 4 per rank; 32 samples per epoch = 4 steps; resumed at 6: mid-epoch 1
    flags = sets(
        generator__stream=True,
        generator__epoch_samples=32,
        generator__num_workers=1,
        generator__shuffle_buffer=8,
    )
    run = tmp_path / "run"
    first = torchrun(dataset, run, *flags, *sets(generator__max_steps=6))
    assert first["world_size"] == 2 and first["stream"] and first["steps"] == 6
    resumed = torchrun(dataset, run, *flags, *sets(generator__max_steps=10), "--resume")
    assert resumed["resumed_from"] == 6 and resumed["steps"] == 10
    straight = tmp_path / "straight"
    torchrun(dataset, straight, *flags, *sets(generator__max_steps=10))
    got, want = losses(run), losses(straight)
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        assert got[step] == pytest.approx(want[step], rel=RTOL), step


def test_stream_config_errors(dataset, tmp_path):
    from weightgen.errors import ConfigError

    with pytest.raises(ConfigError, match="epoch_samples"):
        scfg(epoch_samples=0)
    with pytest.raises(TrainError, match="no manifest") as e:
        train_generator(tmp_path / "nope", tmp_path / "out", scfg(), progress=False)
    one_line(e)
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    (bad / "stats.safetensors").unlink()
    with pytest.raises(TrainError, match="stats.safetensors") as e:
        train_generator(bad, tmp_path / "out", scfg(), progress=False)
    one_line(e)
