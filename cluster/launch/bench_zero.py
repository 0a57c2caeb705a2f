"""Generator training throughput (samples/s): DeepSpeed ZeRO 1, 2, 3 on 1 and 2 processes against a
plain PyTorch loop (AdamW, same model, same loss, same global batch) on one machine.

  DS_ACCELERATOR=cpu python cluster/launch/bench_zero.py --data runs/demo/dataset --steps 30

Each DeepSpeed figure is `samples_per_s` from jobs/train.py's summary (the whole step loop,
including the final checkpoint); the plain loop times its steps after one warm-up step. CPU runs use
all cores in one process and one thread per rank with 2 processes. On a GPU (DS_ACCELERATOR unset,
deepspeed installed) each stage also reports rank 0's peak GPU memory. Prints one JSON line.

  python cluster/launch/bench_zero.py --data DATA --size large --batch-size 64 --nproc 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def plain_loop(data_uri: str, steps: int, batch: int, size: str) -> float:
    import torch

    from weightgen.diffusion.model import block_dit
    from weightgen.diffusion.schedule import diffusion_loss, make_train_scheduler
    from weightgen.train import load_train_data

    torch.manual_seed(0)
    data = load_train_data(data_uri)
    model = block_dit(
        size,
        num_blocks=data.layout.num_blocks,
        block_size=data.layout.block_size,
        text_dim=data.pooled.shape[1],
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched, valid = make_train_scheduler(), data.layout.valid_mask("cpu")
    g = torch.Generator().manual_seed(0)
    t0 = 0.0
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        idx = torch.randint(0, data.num_samples, (batch,), generator=g)
        loss = diffusion_loss(
            model, data.x0[idx], valid, data.pooled[idx], data.tokens[idx], data.mask[idx],
            scheduler=sched, generator=g,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_run(data_uri: str, stage: int, nproc: int, steps: int, batch: int, size: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        launcher = [sys.executable]
        if nproc > 1:
            launcher += [
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(nproc),
            ]
        cmd = [
            *launcher, str(REPO / "jobs" / "train.py"), "--data", data_uri, "--out", out,
            "--config", "tiny", "--no-progress",
            *(f"--set=generator.{k}={v}" for k, v in dict(
                zero_stage=stage, max_steps=steps, batch_size=batch, size=size, ckpt_every=10**9,
                log_every=steps, threads=max(1, (os.cpu_count() or 1) // nproc),
                loss_weight="uniform", image_loss=0, paraphrases="false", text_noise=0,
            ).items()),
        ]  # fmt: skip
        env = dict(os.environ)
        if not _cuda():
            env["DS_ACCELERATOR"] = env.get("DS_ACCELERATOR", "cpu")
        env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        lines = [ln for ln in output.splitlines() if ln.startswith("summary: ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"ZeRO-{stage} x{nproc} failed:\n{output[-3000:]}")
        return json.loads(lines[0][len("summary: ") :])


def synthetic_dataset(root: Path, samples: int, num_blocks: int, block_size: int = 256) -> str:
    """A data set of random LoRAs (one tensor of num_blocks x block_size values) and random
    texts, as collection writes one: for timing on a machine without a collected data set."""
    import numpy as np

    from weightgen.blocks import BlockLayout, BlockStatsAccumulator
    from weightgen.data import ShardWriter, WeightSample

    layout = BlockLayout([("w.lora_A", (num_blocks, block_size))], block_size=block_size)
    rng = np.random.default_rng(0)
    acc = BlockStatsAccumulator(layout)
    with ShardWriter(root, layout_hash=layout.hash, block_size=block_size,
                     num_blocks=layout.num_blocks, maxcount=64,
                     extra={"layout": layout.to_dict(), "text_model": "all-MiniLM-L6-v2"}) as w:  # fmt: skip
        for i in range(samples):
            blocks = rng.normal(size=(num_blocks, block_size)).astype(np.float32)
            pooled = rng.normal(size=384).astype(np.float32)
            tokens = rng.normal(size=(16, 384)).astype(np.float16)
            w.write(WeightSample(f"s{i:05d}-s0", blocks, pooled / np.linalg.norm(pooled),
                                 tokens=tokens, meta={"text": f"concept {i}"}))  # fmt: skip
            acc.update(blocks)
    (root / "layout.json").write_text(json.dumps(layout.to_dict()))
    acc.finalize().save(root / "stats.safetensors")
    return str(root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "runs" / "demo" / "dataset"))
    p.add_argument("--synthetic", type=int, nargs=2, metavar=("SAMPLES", "BLOCKS"), default=None,
                   help="time on a random data set of SAMPLES LoRAs of BLOCKS blocks instead")  # fmt: skip
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--size", default="tiny")
    p.add_argument("--nproc", default="1,2", help="process counts to try")
    p.add_argument("--stages", default="1,2,3", help="ZeRO stages to try")
    p.add_argument("--no-plain", action="store_true", help="skip the plain PyTorch loop")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-zero-") as tmp:
        data = args.data
        if args.synthetic:
            data = synthetic_dataset(Path(tmp) / "ds", *args.synthetic)
        res = _measure(args, data)
    print(json.dumps(res), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _measure(args, data: str) -> dict:
    from weightgen.train.memory import zero_memory_plan

    res: dict = {"units": "samples/s", "steps": args.steps, "batch_size": args.batch_size,
                 "size": args.size, "cuda": _cuda()}  # fmt: skip
    if not args.no_plain:
        res["plain_pytorch_1proc"] = round(
            plain_loop(data, args.steps, args.batch_size, args.size), 2
        )
    for nproc in map(int, args.nproc.split(",")):
        for stage in map(int, args.stages.split(",")):
            s = deepspeed_run(data, stage, nproc, args.steps, args.batch_size, args.size)
            res[f"zero{stage}_{nproc}proc"] = round(s["samples_per_s"], 2)
            # the ZeRO paper's model-state floor per rank (weightgen.train.memory), to compare
            plan = zero_memory_plan(s["params"], nproc, stage, bf16=bool(s.get("bf16")))
            res[f"zero{stage}_{nproc}proc_plan_gib"] = round(plan.total / 2**30, 3)
            if s.get("peak_memory_gib") is not None:  # GPU: rank 0's peak, per ZeRO stage
                res[f"zero{stage}_{nproc}proc_peak_gib"] = round(s["peak_memory_gib"], 3)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
