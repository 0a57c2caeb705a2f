"""Benchmark of the fused block kernels against eager torch and torch.compile of the reference.

    python -m weightgen_kernels.bench [--concepts 1 64 1024] [--dtypes float32 bfloat16] [--out DIR]
                            [--peak-gbps G] [--no-compile] [--sweep]

Bytes each kernel must move (each value once; stats read once; padding neither read nor written
into weights):
    normalize:  B*P*in + B*N*S*out + 2*N*S*4     (reads flat, writes padded blocks)
    reassemble: B*P*in + B*P*out + 2*N*S*4       (reads valid block entries, writes flat)
Times: triton.testing.do_bench medians (ms; L2 flushed before each call). GB/s = bytes / time,
1 GB = 1e9 B; % peak against the card's datasheet bandwidth; % copy against a measured 1 GiB
device-to-device copy (read + write). Writes CSV + JSON under --out (default runs/bench/kernels).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

from weightgen.blocks import BlockLayout
from weightgen.blocks.reference import normalize_core, reassemble_core

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PEAK_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0}  # datasheet, GB/s


def paper_layout(block_size: int = 256) -> BlockLayout:
    """The LoRA layout of the `paper` preset: rank-8 LoRA (peft) on the stem/downsampling, the
    transformer block and the upsampling/head of the 256x256 E2GAN-like base (82,608 values).
    Built from the real modules, so it is exactly what collection writes."""
    from weightgen.config import get_preset
    from weightgen.gan import E2GANGenerator, build_concept_model, lora_state_dict

    preset = get_preset("paper")
    base_state = E2GANGenerator(preset.gan).state_dict()
    sd = lora_state_dict(build_concept_model("lora", preset.gan, preset.lora, base_state))
    return BlockLayout.from_state_dict(sd, block_size=block_size)


def peak_gbps(name: str) -> float | None:
    for key, v in PEAK_GBPS.items():
        if all(part in name for part in key.split()):
            return v
    return None


def _bench(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_gbps() -> float:
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def run(args) -> list[dict]:
    from weightgen_kernels.block_kernels import block_normalize

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    peak = args.peak_gbps or peak_gbps(name)
    copy = copy_gbps()
    layout = paper_layout(args.block_size)
    n, s, p = layout.num_blocks, layout.block_size, layout.num_params
    print(f"# {name}; peak {peak} GB/s (datasheet); measured copy {copy:.0f} GB/s")
    print(f"# layout: {len(layout.names)} tensors, P={p}, S={s}, N={n}, hash {layout.hash[:12]}")
    off, ln = layout.block_offsets(dev), layout.block_lengths(dev)
    idx, mask, pos = layout.gather_index(dev), layout.valid_mask(dev), layout.valid_positions(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    mean = torch.randn(n, s, device=dev, generator=g) * 0.1
    std = torch.rand(n, s, device=dev, generator=g) + 0.05
    compiled_norm = torch.compile(normalize_core, dynamic=False)
    compiled_reas = torch.compile(reassemble_core, dynamic=False)
    rows: list[dict] = []
    for dname in args.dtypes:
        dt = DTYPES[dname]
        for b in args.concepts:
            flat = torch.randn(b, p, device=dev, generator=g).to(dt)
            blocks = block_normalize(flat, off, ln, mean, std)
            cases = _cases(
                flat,
                blocks,
                layout,
                off,
                ln,
                idx,
                mask,
                pos,
                mean,
                std,
                compiled_norm,
                compiled_reas,
            )
            for kernel, (nbytes, impls) in cases.items():
                times = {}
                for impl, fn in impls.items():
                    if impl == "compile" and args.no_compile:
                        continue
                    try:
                        t0 = time.time()
                        fn()
                        torch.cuda.synchronize()
                        warm_s = time.time() - t0
                        ms = _bench(fn)
                    except Exception as e:  # a compile failure must not lose the other rows
                        print(f"# {kernel}/{impl}/{dname}/B={b}: failed: {e!r}"[:300])
                        continue
                    times[impl] = ms
                    gbps = nbytes / ms / 1e6
                    rows.append(
                        {
                            "device": name,
                            "kernel": kernel,
                            "impl": impl,
                            "dtype": dname,
                            "concepts": b,
                            "P": p,
                            "N": n,
                            "S": s,
                            "bytes": nbytes,
                            "ms": round(ms, 5),
                            "gbps": round(gbps, 1),
                            "pct_peak": round(100 * gbps / peak, 1) if peak else None,
                            "pct_copy": round(100 * gbps / copy, 1),
                            "speedup_vs_eager": None,
                            "first_call_s": round(warm_s, 2),
                        }
                    )
                if "eager" in times:
                    for r in rows[-len(times) :]:
                        r["speedup_vs_eager"] = round(times["eager"] / r["ms"], 2)
                _write(rows, args.out)  # after every case: a killed run keeps what it measured
    if args.sweep:
        for dt in args.dtypes:
            rows += sweep(layout, mean, std, off, ln, name, peak, max(args.concepts), DTYPES[dt])
        _write(rows, args.out)
    return rows


def _cases(flat, blocks, layout, off, ln, idx, mask, pos, mean, std, cnorm, creas):
    """{kernel: (bytes it must move, {impl: fn})} for one batch of concepts."""
    from weightgen_kernels.block_kernels import block_normalize, block_reassemble

    n, s, p = layout.num_blocks, layout.block_size, layout.num_params
    b, dt = flat.shape[0], flat.dtype
    el = flat.element_size()
    stats_bytes = 2 * n * s * 4
    return {
        "normalize": (
            b * p * el + b * n * s * el + stats_bytes,
            {
                "triton": lambda: block_normalize(flat, off, ln, mean, std),
                "eager": lambda: normalize_core(flat, idx, mask, mean, std, dt),
                "compile": lambda: cnorm(flat, idx, mask, mean, std, dt),
            },
        ),
        "reassemble": (
            2 * b * p * el + stats_bytes,
            {
                "triton": lambda: block_reassemble(blocks, off, ln, mean, std, p),
                "eager": lambda: reassemble_core(blocks, pos, mean, std, dt),
                "compile": lambda: creas(blocks, pos, mean, std, dt),
            },
        ),
    }


def sweep(layout, mean, std, off, ln, name, peak, b, dtype=torch.float32) -> list[dict]:
    """Rows per program x warps for both kernels, `dtype` data, b concepts."""
    from weightgen_kernels.block_kernels import block_normalize, block_reassemble

    n, s, p = layout.num_blocks, layout.block_size, layout.num_params
    flat = torch.randn(b, p, device="cuda").to(dtype)
    blocks = block_normalize(flat, off, ln, mean, std)
    out = []
    e = flat.element_size()
    nbytes = {
        "normalize": b * p * e + b * n * s * e + 2 * n * s * 4,
        "reassemble": 2 * b * p * e + 2 * n * s * 4,
    }
    for rows_pp in (4, 8, 16, 32, 64):
        for warps in (2, 4, 8):
            kw = dict(block_rows=rows_pp, num_warps=warps)
            for kernel in ("normalize", "reassemble"):
                if kernel == "normalize":
                    ms = _bench(partial(block_normalize, flat, off, ln, mean, std, **kw))
                else:
                    ms = _bench(partial(block_reassemble, blocks, off, ln, mean, std, p, **kw))
                gbps = nbytes[kernel] / ms / 1e6
                out.append(
                    {
                        "device": name,
                        "kernel": kernel,
                        "impl": f"triton-r{rows_pp}-w{warps}",
                        "dtype": str(dtype).removeprefix("torch."),
                        "concepts": b,
                        "P": p,
                        "N": n,
                        "S": s,
                        "bytes": nbytes[kernel],
                        "ms": round(ms, 5),
                        "gbps": round(gbps, 1),
                        "pct_peak": round(100 * gbps / peak, 1) if peak else None,
                    }
                )
                print(
                    f"sweep {kernel:10s} {dtype} rows={rows_pp:2d} warps={warps} {ms:.4f} ms "
                    f"{gbps:.0f} GB/s"
                )
    return out


def _write(rows: list[dict], out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = out / ".kernels.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "kernels.csv")
    tmp = out / ".kernels.json.tmp"
    tmp.write_text(
        json.dumps({"units": {"ms": "ms (median)", "gbps": "1e9 B/s"}, "rows": rows}, indent=1)
    )
    os.replace(tmp, out / "kernels.json")


def print_table(rows: list[dict]) -> None:
    head = f"{'kernel':10s} {'impl':8s} {'dtype':8s} {'B':>5s} {'ms':>9s} {'GB/s':>7s} {'%peak':>6s} {'%copy':>6s} {'xeager':>6s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["impl"] not in ("triton", "eager", "compile"):
            continue
        pk = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}"
        sp = "-" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}"
        print(
            f"{r['kernel']:10s} {r['impl']:8s} {r['dtype']:8s} {r['concepts']:5d} {r['ms']:9.4f} "
            f"{r['gbps']:7.0f} {pk:>6s} {r['pct_copy']:6.1f} {sp:>6s}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m weightgen_kernels.bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--concepts", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--peak-gbps", type=float, default=None, help="card's peak bandwidth, GB/s")
    ap.add_argument("--out", default="runs/bench/kernels")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile references")
    ap.add_argument("--sweep", action="store_true", help="also sweep rows/program x warps")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "weightgen_kernels.bench: needs a CUDA GPU (none found); nothing measured",
            file=sys.stderr,
        )
        return 2
    from weightgen_kernels.block_kernels import interpreting

    if interpreting():
        print(
            "weightgen_kernels.bench: unset TRITON_INTERPRET (or set it to 0) to time the GPU kernels",
            file=sys.stderr,
        )
        return 2
    rows = run(args)
    print_table(rows)
    print(f"# wrote {args.out}/kernels.csv and kernels.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
