"""BlockLayout, BlockStats and the torch reference of normalise / reassemble (CPU)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from weightgen.blocks import (
    BlockLayout,
    BlockStats,
    BlockStatsAccumulator,
    LayoutMismatchError,
    normalize,
    normalize_ref,
    reassemble,
    reassemble_ref,
)

SHAPES = {
    "a.scalar": (1,),
    "b.vec37": (37,),
    "c.mat": (3, 41),  # 123
    "d.lin": (8, 95),  # 760
    "e.conv": (4, 3, 7, 7),  # 588
    "f.big": (16, 70),  # 1120
}


def make_sd(seed=0, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("S", [1, 7, 64, 128, 256, 1000])
def test_counts_and_index_tensors(S):
    layout = BlockLayout.from_state_dict(make_sd(), block_size=S)
    numels = [int(np.prod(SHAPES[k])) for k in sorted(SHAPES)]
    assert layout.names == sorted(SHAPES)
    assert layout.num_params == sum(numels)
    assert layout.num_blocks == sum(-(-n // S) for n in numels)
    off, ln, ids = layout.block_offsets(), layout.block_lengths(), layout.block_tensor_ids()
    assert off.shape == ln.shape == ids.shape == (layout.num_blocks,)
    assert int(ln.min()) >= 1 and int(ln.max()) <= S
    assert int(ln.sum()) == layout.num_params
    # blocks tile each tensor without crossing its end
    starts = np.cumsum([0] + numels)
    for o, n, t in zip(off.tolist(), ln.tolist(), ids.tolist()):
        assert starts[t] <= o and o + n <= starts[t + 1]
        assert (o - starts[t]) % S == 0
    mask = layout.valid_mask()
    assert mask.shape == (layout.num_blocks, S) and int(mask.sum()) == layout.num_params


@pytest.mark.parametrize("S", [128, 256, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_round_trip(S, dtype):
    sd = make_sd(1, dtype=dtype)
    layout = BlockLayout.from_state_dict(sd, block_size=S)
    blocks = layout.to_blocks(sd)
    assert blocks.dtype == torch.float32 and blocks.shape == (layout.num_blocks, S)
    assert torch.all(blocks[~layout.valid_mask()] == 0)
    back = layout.from_blocks(blocks)
    assert list(back) == layout.names
    for k in sd:
        assert back[k].shape == sd[k].shape
        assert torch.equal(back[k].to(dtype), sd[k])
    flat = layout.flatten(sd)
    assert flat.shape == (layout.num_params,)
    un = layout.unflatten(flat)
    assert all(torch.equal(un[k], sd[k]) for k in sd)
    # batched unflatten
    fb = torch.stack([flat, 2 * flat])  # (2, P)
    ub = layout.unflatten(fb)
    assert all(ub[k].shape == (2, *sd[k].shape) and torch.equal(ub[k][1], 2 * sd[k]) for k in sd)


def test_layout_order_as_given_and_validation():
    layout = BlockLayout([("z", (3,)), ("a", (2, 2))], block_size=4)
    assert layout.names == ["z", "a"] and layout.shapes == [(3,), (2, 2)]
    assert layout.block_offsets().tolist() == [0, 3] and layout.block_lengths().tolist() == [3, 4]
    with pytest.raises(ValueError, match="unique"):
        BlockLayout([("a", (3,)), ("a", (2,))])
    with pytest.raises(ValueError, match="positive"):
        BlockLayout([("a", (3, 0))])
    with pytest.raises(ValueError, match="block_size"):
        BlockLayout([("a", (3,))], block_size=0)


def test_padding_never_leaks_into_weights():
    sd = make_sd(2)
    layout = BlockLayout.from_state_dict(sd, block_size=128)
    blocks = layout.to_blocks(sd)
    garbage = blocks.clone()
    garbage[~layout.valid_mask()] = 1e6
    back = layout.from_blocks(garbage)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    n, s = layout.num_blocks, layout.block_size
    mean, std = torch.randn(n, s), torch.rand(n, s) + 0.5
    g3 = torch.randn(3, n, s)
    g3[:, ~layout.valid_mask()] = float("nan")
    out = reassemble_ref(g3, layout, mean, std)
    assert out.shape == (3, layout.num_params) and torch.isfinite(out).all()


def test_hash_stable_and_sensitive():
    sd = make_sd()
    h = BlockLayout.from_state_dict(sd).hash
    assert len(h) == 64 and h == BlockLayout.from_state_dict(dict(reversed(sd.items()))).hash
    assert h != BlockLayout.from_state_dict(sd, block_size=128).hash
    renamed = {("x" + k if k == "b.vec37" else k): v for k, v in sd.items()}
    assert h != BlockLayout.from_state_dict(renamed).hash
    reshaped = {**sd, "c.mat": sd["c.mat"].reshape(41, 3)}
    assert h != BlockLayout.from_state_dict(reshaped).hash
    layout = BlockLayout.from_state_dict(sd)
    d = json.loads(json.dumps(layout.to_dict()))
    assert BlockLayout.from_dict(d) == layout and BlockLayout.from_dict(d).hash == h
    # another process computes the same hash
    code = (
        "import json; from weightgen.blocks import BlockLayout;"
        f"print(BlockLayout.from_dict(json.loads({json.dumps(d)!r})).hash)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == h


def test_mismatch_errors_are_one_clear_line():
    sd = make_sd()
    layout = BlockLayout.from_state_dict(sd)
    bad = {**sd, "d.lin": torch.zeros(8, 96)}
    with pytest.raises(LayoutMismatchError) as e:
        layout.to_blocks(bad)
    msg = str(e.value)
    assert "'d.lin'" in msg and "(8, 95)" in msg and "(8, 96)" in msg and "\n" not in msg
    missing = {k: v for k, v in sd.items() if k != "c.mat"}
    with pytest.raises(LayoutMismatchError, match=r"missing \['c.mat'\]"):
        layout.flatten(missing)
    with pytest.raises(LayoutMismatchError, match="unexpected"):
        layout.flatten({**sd, "extra": torch.zeros(2)})
    with pytest.raises(LayoutMismatchError, match="N="):
        layout.from_blocks(torch.zeros(layout.num_blocks + 1, layout.block_size))
    with pytest.raises(LayoutMismatchError, match="P="):
        layout.unflatten(torch.zeros(layout.num_params - 1))
    assert issubclass(LayoutMismatchError, ValueError)


def _data(layout, count, seed=3):
    g = torch.Generator().manual_seed(seed)
    sds = []
    for _ in range(count):
        sd = {
            k: torch.randn(s, generator=g) * (i + 1) + i
            for i, (k, s) in enumerate(zip(layout.names, layout.shapes))
        }
        sds.append(layout.to_blocks(sd).numpy())
    return np.stack(sds)  # (C, N, S)


@pytest.mark.parametrize("mode", ["element", "block"])
def test_stats_match_numpy(mode):
    layout = BlockLayout.from_state_dict(make_sd(), block_size=128)
    data = _data(layout, 11).astype(np.float64)  # (C, N, S)
    acc = BlockStatsAccumulator(layout, mode=mode)
    acc.update(data[0])  # (N, S)
    acc.update(torch.from_numpy(data[1:5]))  # (B, N, S) tensor
    acc.update(data[5:])  # (B, N, S) array
    st = acc.finalize()
    assert st.count == 11 and st.layout_hash == layout.hash
    assert st.mean.dtype == st.std.dtype == torch.float32
    mask = layout.valid_mask().numpy()
    if mode == "element":
        ref_mean, ref_std = data.mean(0), data.std(0)
    else:
        ref_mean = np.zeros(mask.shape)
        ref_std = np.zeros(mask.shape)
        for n in range(layout.num_blocks):
            v = data[:, n, mask[n]]
            ref_mean[n], ref_std[n] = v.mean(), v.std()
    np.testing.assert_allclose(st.mean.numpy()[mask], ref_mean[mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.std.numpy()[mask], ref_std[mask], rtol=1e-6, atol=1e-6)
    assert np.all(st.mean.numpy()[~mask] == 0) and np.all(st.std.numpy()[~mask] == 1)


def test_stats_std_floor_and_errors():
    layout = BlockLayout([("w", (300,))], block_size=256)
    acc = BlockStatsAccumulator(layout, eps=1e-3)
    acc.update(torch.ones(4, 2, 256))  # constant data: std 0 -> eps
    st = acc.finalize()
    assert torch.all(st.std[layout.valid_mask()] == torch.tensor(1e-3, dtype=torch.float32))
    with pytest.raises(LayoutMismatchError):
        acc.update(torch.ones(2, 3, 256))
    with pytest.raises(ValueError, match="no samples"):
        BlockStatsAccumulator(layout).finalize()


def test_stats_save_load(tmp_path):
    layout = BlockLayout.from_state_dict(make_sd(), block_size=128)
    acc = BlockStatsAccumulator(layout)
    acc.update(_data(layout, 5))
    st = acc.finalize()
    p = tmp_path / "sub" / "stats.safetensors"
    st.save(p)
    back = BlockStats.load(p, expected_layout_hash=layout.hash)
    assert back.count == 5 and back.layout_hash == layout.hash
    assert torch.equal(back.mean, st.mean) and torch.equal(back.std, st.std)
    back.check(layout)
    with pytest.raises(LayoutMismatchError, match="expected"):
        BlockStats.load(p, expected_layout_hash="0" * 64)
    with pytest.raises(LayoutMismatchError):
        back.check(BlockLayout.from_state_dict(make_sd(), block_size=256))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_normalize_reassemble(dtype):
    sd = make_sd(4)
    layout = BlockLayout.from_state_dict(sd, block_size=128)
    n, s = layout.num_blocks, layout.block_size
    mean, std = torch.randn(n, s), torch.rand(n, s) + 0.5
    flat = torch.stack([layout.flatten(make_sd(i)) for i in range(3)]).to(dtype)  # (3, P)
    y = normalize(flat, layout, mean, std)
    assert y.shape == (3, n, s) and y.dtype == dtype
    assert torch.all(y[:, ~layout.valid_mask()] == 0)
    blocks = torch.stack([layout.to_blocks(layout.unflatten(f.float())) for f in flat])
    expect = ((blocks - mean) / std) * layout.valid_mask()
    torch.testing.assert_close(y.float(), expect.to(dtype).float())
    back = reassemble(y, layout, mean, std, out_dtype=torch.float32)
    assert back.shape == (3, layout.num_params) and back.dtype == torch.float32
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(back, flat.float(), rtol=tol, atol=tol * 4)
    # unbatched
    y1 = normalize_ref(flat[1], layout, mean, std, out_dtype=torch.float32)
    assert y1.shape == (n, s)
    assert reassemble_ref(y1, layout, mean, std).shape == (layout.num_params,)


def test_reference_checks():
    layout = BlockLayout.from_state_dict(make_sd(), block_size=128)
    n, s = layout.num_blocks, layout.block_size
    flat = torch.randn(2, layout.num_params)
    with pytest.raises(TypeError, match="float32"):
        normalize_ref(flat, layout, torch.zeros(n, s, dtype=torch.float16), torch.ones(n, s))
    with pytest.raises(LayoutMismatchError, match="std"):
        normalize_ref(flat, layout, torch.zeros(n, s), torch.ones(n, s + 1))
    with pytest.raises(TypeError, match="dtype"):
        normalize_ref(flat.double(), layout, torch.zeros(n, s), torch.ones(n, s))


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None;"
        "import weightgen.blocks as b; assert 'triton' not in [m for m in sys.modules if sys.modules[m]]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
