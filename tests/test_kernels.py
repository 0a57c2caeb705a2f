"""Triton block kernels against the torch reference.

CPU: the launchers run under TRITON_INTERPRET=1 (set by conftest) on CPU tensors; grids are kept
tiny (~30 programs a launch). GPU (`-m gpu`, TRITON_INTERPRET=0): the dispatching functions.
"""

import pytest
import torch
from weightgen_kernels.block_kernels import block_normalize, block_reassemble, interpreting

from weightgen.blocks import BlockLayout, normalize, normalize_ref, reassemble, reassemble_ref

ENTRIES = [
    ("t1", (1,)),
    ("t37", (37,)),
    ("t123", (3, 41)),
    ("t588", (4, 3, 7, 7)),
    ("t760", (8, 95)),
    ("t2000", (4, 5, 10, 10)),
]
# max |kernel - reference| allowed, in the output dtype: fp32 exact except FMA on GPU; one ulp
# of a rounding difference for the half types
TOL = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
}

cpu_only = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU tensors)")


def _case(S, B, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    layout = BlockLayout(ENTRIES, block_size=S)
    n = layout.num_blocks
    mean = torch.randn(n, S, generator=g) * 0.1
    std = torch.rand(n, S, generator=g) + 0.05
    flat = (torch.randn(B, layout.num_params, generator=g) * 2).to(dtype)
    return layout, flat.to(device), mean.to(device), std.to(device)


def _launch_args(layout, device="cpu"):
    return layout.block_offsets(device), layout.block_lengths(device)


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("S", [128, 256, 512])
def test_kernels_match_reference(S, B, dtype):
    layout, flat, mean, std = _case(S, B, dtype, seed=S + B)
    off, ln = _launch_args(layout)
    out = torch.full((B, layout.num_blocks, S), float("nan"), dtype=dtype)  # poisoned
    y = block_normalize(flat, off, ln, mean, std, out=out)
    ref = normalize_ref(flat, layout, mean, std)
    assert y is out and y.shape == ref.shape and y.dtype == dtype
    torch.testing.assert_close(y, ref, **TOL[dtype])
    assert torch.all(y[:, ~layout.valid_mask()] == 0)
    if dtype == torch.float32:
        assert torch.equal(y, ref)

    z = block_reassemble(y, off, ln, mean, std, layout.num_params)
    zref = reassemble_ref(y, layout, mean, std)
    assert z.shape == (B, layout.num_params) and z.dtype == dtype
    torch.testing.assert_close(z, zref, **TOL[dtype])
    if dtype == torch.float32:
        torch.testing.assert_close(z, flat, rtol=1e-5, atol=1e-6)


@cpu_only
@pytest.mark.parametrize("S", [100, 1000])
def test_non_power_of_two_block_size(S):
    layout, flat, mean, std = _case(S, 2, torch.float32, seed=S)
    off, ln = _launch_args(layout)
    y = block_normalize(flat, off, ln, mean, std)
    assert torch.equal(y, normalize_ref(flat, layout, mean, std))
    z = block_reassemble(y, off, ln, mean, std, layout.num_params)
    assert torch.equal(z, reassemble_ref(y, layout, mean, std))


@cpu_only
def test_exact_fp32_round_trip_and_layout_agreement():
    layout, flat, _, _ = _case(128, 3, torch.float32, seed=7)
    off, ln = _launch_args(layout)
    zero, one = torch.zeros(layout.num_blocks, 128), torch.ones(layout.num_blocks, 128)
    y = block_normalize(flat, off, ln, zero, one)
    assert torch.equal(y[1], layout.to_blocks(layout.unflatten(flat[1])))
    assert torch.equal(block_reassemble(y, off, ln, zero, one, layout.num_params), flat)


@cpu_only
def test_padding_never_written_into_weights():
    layout, flat, mean, std = _case(256, 3, torch.float32, seed=11)
    off, ln = _launch_args(layout)
    pad = ~layout.valid_mask()
    mean[pad], std[pad] = float("nan"), 0.0  # stats on padding must not matter either
    y = block_normalize(flat, off, ln, mean, std)
    assert torch.all(y[:, pad] == 0) and torch.isfinite(y).all()
    garbage = y.clone()
    garbage[:, pad] = float("nan")
    out = torch.full((3, layout.num_params), float("nan"))
    z = block_reassemble(garbage, off, ln, mean, std, layout.num_params, out=out)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, flat, rtol=1e-5, atol=1e-6)


@cpu_only
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"), [(torch.float32, torch.bfloat16), (torch.float16, torch.float32)]
)
def test_mixed_dtypes_strided_input_and_batch_tiles(in_dtype, out_dtype):
    layout, flat, mean, std = _case(128, 3, in_dtype, seed=5)
    wide = torch.zeros(3, layout.num_params + 9, dtype=in_dtype)
    wide[:, : layout.num_params] = flat
    strided = wide[:, : layout.num_params]  # row stride P + 9
    off, ln = _launch_args(layout)
    y = block_normalize(strided, off.int(), ln.int(), mean, std, out_dtype, block_rows=1)
    ref = normalize_ref(flat, layout, mean, std, out_dtype)
    assert y.dtype == out_dtype
    torch.testing.assert_close(y, ref, **TOL[out_dtype])
    z = block_reassemble(ref, off, ln, mean, std, layout.num_params, in_dtype, block_rows=2)
    torch.testing.assert_close(z, reassemble_ref(ref, layout, mean, std, in_dtype), **TOL[in_dtype])


@cpu_only
def test_offsets_outside_buffer_are_masked():
    layout, flat, mean, std = _case(128, 1, torch.float32)
    off, ln = _launch_args(layout)
    bad = off.clone()
    bad[-1], bad[0] = layout.num_params + 5, -300
    y = block_normalize(flat, bad, ln, mean, std)
    assert torch.all(y[0, -1] == 0) and torch.all(y[0, 0] == 0)


@cpu_only
def test_launcher_checks(monkeypatch):
    layout, flat, mean, std = _case(128, 2, torch.float32)
    off, ln = _launch_args(layout)
    with pytest.raises(TypeError, match="mean must be float32"):
        block_normalize(flat, off, ln, mean.half(), std)
    with pytest.raises(TypeError, match="data dtype"):
        block_normalize(flat.double(), off, ln, mean, std)
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        block_normalize(flat[0], off, ln, mean, std)
    with pytest.raises(ValueError, match="offsets must be"):
        block_normalize(flat, off[:-1], ln, mean, std)
    with pytest.raises(TypeError, match="lengths must be int32"):
        block_normalize(flat, off, ln.float(), mean, std)
    with pytest.raises(ValueError, match="mean/std"):
        block_normalize(flat, off, ln, mean, std[:, :-1])
    with pytest.raises(ValueError, match="block size S"):
        big = torch.zeros(layout.num_blocks, 2048)
        block_normalize(flat, off, ln, big, big)
    blocks = normalize_ref(flat, layout, mean, std)
    with pytest.raises(ValueError, match="blocks must be"):
        block_reassemble(blocks[:, :-1], off, ln, mean, std, layout.num_params)
    with pytest.raises(ValueError, match="out must be"):
        block_reassemble(blocks, off, ln, mean, std, layout.num_params, out=torch.empty(2, 3))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        block_normalize(flat, off, ln, mean, std)


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B", [1, 64, 1500])
@pytest.mark.parametrize("S", [128, 256, 512, 1000])
@pytest.mark.gpu
@pytest.mark.skipif(interpreting(), reason="GPU tests need TRITON_INTERPRET=0")
def test_gpu_dispatch_matches_reference(S, B, dtype):
    from weightgen_kernels.bench import paper_layout

    layout = paper_layout(block_size=S)
    g = torch.Generator(device="cuda").manual_seed(S * B)
    n, p = layout.num_blocks, layout.num_params
    mean = torch.randn(n, S, device="cuda", generator=g) * 0.1
    std = torch.rand(n, S, device="cuda", generator=g) + 0.05
    flat = torch.randn(B, p, device="cuda", generator=g).to(dtype)
    y = normalize(flat, layout, mean, std)
    ref = normalize_ref(flat, layout, mean, std)
    torch.testing.assert_close(y, ref, **TOL[dtype])
    if dtype == torch.float32:
        assert torch.equal(y, ref)
    assert torch.all(y[:, ~layout.valid_mask("cuda")] == 0)
    garbage = y.clone()
    garbage[:, ~layout.valid_mask("cuda")] = float("nan")
    z = reassemble(garbage, layout, mean, std, out_dtype=torch.float32)
    zref = reassemble_ref(y, layout, mean, std, out_dtype=torch.float32)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, zref, rtol=1e-6, atol=1e-6)
    one = normalize(flat[0], layout, mean, std)
    assert one.shape == (n, S)
    assert reassemble(one, layout, mean, std).shape == (p,)


@cpu_only
def test_dispatch_triton_backend_on_cpu_interpreter():
    layout, flat, mean, std = _case(256, 2, torch.bfloat16, seed=3)
    y = normalize(flat, layout, mean, std, backend="triton")
    torch.testing.assert_close(y, normalize_ref(flat, layout, mean, std), **TOL[torch.bfloat16])
    y1 = normalize(flat[1].float(), layout, mean, std, backend="triton")  # (P,) -> (N, S)
    assert y1.shape == (layout.num_blocks, 256)
    assert torch.equal(y1, normalize_ref(flat[1].float(), layout, mean, std))
    z1 = reassemble(y1, layout, mean, std, backend="triton")
    assert torch.equal(z1, reassemble_ref(y1, layout, mean, std))
    z = reassemble(y, layout, mean, std, torch.float32, backend="triton")
    assert z.shape == (2, layout.num_params) and z.dtype == torch.float32
    with pytest.raises(ValueError, match="backend"):
        normalize(flat, layout, mean, std, backend="cuda")


def test_missing_triton_falls_back_with_one_warning(monkeypatch):
    import sys
    import warnings

    import weightgen.blocks as wb

    monkeypatch.setattr(wb, "_kernels", None)
    # a None entry in sys.modules makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "weightgen_kernels.block_kernels", None)
    with pytest.warns(RuntimeWarning, match="torch reference"):
        assert wb._get_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wb._get_kernels() is None
