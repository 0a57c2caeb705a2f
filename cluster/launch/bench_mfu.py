"""bf16 model FLOPs utilisation of the block generator on one GPU (plain PyTorch step: autocast
bf16, fused AdamW, flash attention through SDPA), with peak memory.

  python cluster/launch/bench_mfu.py --size large --batch 64 128 --out runs/bench/mfu.json

FLOPs of one training step (forward + backward) are counted once with
torch.utils.flop_counter.FlopCounterMode; MFU = FLOPs / step time / the card's dense bf16 peak
(H100/H200 SXM: 989 TFLOP/s, datasheet). The step time is the median of --steps timed steps after
--warmup steps (CUDA events). On CPU it runs the same code on the tiny model as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _peak(name: str) -> float | None:
    for k, v in PEAK_BF16_TFLOPS.items():
        if k in name:
            return v
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large")
    ap.add_argument("--num-blocks", type=int, default=326, help="paper preset: 326 blocks of 256")
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (a lever)")
    ap.add_argument("--out", default="runs/bench/mfu.json")
    args = ap.parse_args(argv)

    from torch.utils.flop_counter import FlopCounterMode

    from weightgen.diffusion.model import block_dit, count_params
    from weightgen.diffusion.schedule import diffusion_loss

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    torch.manual_seed(0)
    model = block_dit(args.size, num_blocks=args.num_blocks, block_size=256).to(dev)
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    n_params = count_params(model)
    # the timed steps run the compiled module; FLOPs are counted once on the eager one
    run = torch.compile(model) if args.compile else model
    n, s, L, D = args.num_blocks, 256, 16, 384
    valid = torch.ones(n, s, dtype=torch.bool, device=dev)
    rows = []
    for b in args.batch:
        x0 = torch.randn(b, n, s, device=dev)
        pooled = torch.nn.functional.normalize(torch.randn(b, D, device=dev), dim=-1)
        tokens = torch.randn(b, L, D, device=dev)
        mask = torch.ones(b, L, dtype=torch.bool, device=dev)

        def step(x0=x0, pooled=pooled, tokens=tokens, mask=mask):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = diffusion_loss(run, x0, valid, pooled, tokens, mask)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        with FlopCounterMode(display=False) as fc:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = diffusion_loss(model, x0, valid, pooled, tokens, mask)
            loss.backward()
        opt.zero_grad(set_to_none=True)
        flops = fc.get_total_flops()
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            if cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                step()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        peak = _peak(name)
        row = {
            "device": name,
            "size": args.size,
            "params": n_params,
            "batch": b,
            "tokens_per_step": b * n,
            "flops_per_step": flops,
            "step_s": t,
            "tflops": flops / t / 1e12,
            "mfu": flops / t / 1e12 / peak if peak else None,
            "samples_per_s": b / t,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "checkpointing": args.checkpointing,
            "compile": args.compile,
        }
        rows.append(row)
        print(
            f"{name} {args.size} ({row['params'] / 1e6:.0f} M) batch {b}: {t * 1e3:.1f} ms/step, "
            f"{row['tflops']:.0f} TFLOP/s, MFU {100 * row['mfu']:.1f}%"
            if row["mfu"]
            else f"{name} {args.size} batch {b}: {t * 1e3:.1f} ms/step, {row['tflops']:.2f} TFLOP/s",
            f"peak {row['peak_mem_gib']:.1f} GiB" if row["peak_mem_gib"] else "",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
