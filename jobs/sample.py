"""Batch sampling: one generated LoRA `.safetensors` per concept text, split over torchrun ranks.

  python jobs/sample.py --generator runs/demo/generator --texts texts.txt --out runs/demo/loras
  DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 jobs/sample.py --generator R \
      --texts texts.txt --out s3://bucket/loras
  torchrun --nnodes N --nproc_per_node G ... jobs/sample.py --generator R --texts T --out s3://b/p

The texts file holds one concept text per line (blank lines are skipped); text i (0-based over the
non-blank lines) goes to rank i % world_size (round-robin, as DiT's sample_ddp.py) and is written as
`NNNNNNN-HHHHHHHHHH.safetensors` (index, then the first 10 hex digits of the text's sha256) with
the text, generator and sampling settings in the safetensors metadata. Every write is atomic
(weightgen.data storage), so a file that exists is complete: a re-run skips it.

Index: each rank writes `index/rank-RRRRR.jsonl` (the files it wrote in this run); after a barrier
rank 0 writes `index.json` over every text whose file exists, whichever run wrote it. The batch's
noise comes from seed (seed, first index of the batch); the seed is stored in each file.

Rank 0 prints one line `summary: {json}`; errors a user can cause are one line on stderr, status 2.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

INDEX_JSON = "index.json"
INDEX_DIR = "index"
SUFFIX = ".safetensors"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", required=True, help="generator run folder (RUN/generator)")
    p.add_argument("--texts", required=True, help="text file: one concept text per line")
    p.add_argument("--out", required=True, help="output folder or URI (path, file://, s3://)")
    p.add_argument("--steps", type=int, default=1, help="denoising steps (1: the paper's)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass per rank")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per rank")
    return p


def file_name(index: int, text: str) -> str:
    """Text i -> its LoRA file name: index (7 digits) + 10 hex digits of sha256(text)."""
    return f"{index:07d}-{hashlib.sha256(text.encode()).hexdigest()[:10]}{SUFFIX}"


def read_texts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"texts file {path} not found (give one concept text per line)")
    texts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"texts file {path} holds no texts (give one concept text per line)")
    return texts


def batch_seed(seed: int, first_index: int) -> int:
    return (seed * 1_000_003 + first_index) % (2**63)


# --------------------------------------------------------------------------------------------
# Distributed edges
# --------------------------------------------------------------------------------------------


_OWN_GROUP = False  # True while this module holds a process group it created (and must destroy)


def _dist_init(device) -> tuple[int, int]:
    """(rank, world) from the torchrun variables; a process group only when world > 1."""
    global _OWN_GROUP
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        _OWN_GROUP = True
    return rank, world


def _all_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_max(value: float, device) -> float:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def write_index(storage, texts: list[str], settings: dict) -> dict:
    """Rank 0, after every rank is done: index.json over every text whose file exists."""
    present = set(storage.list())
    entries = [
        {"index": i, "text": t, "file": file_name(i, t)}
        for i, t in enumerate(texts)
        if file_name(i, t) in present
    ]
    index = {**settings, "num_texts": len(texts), "num_done": len(entries), "entries": entries}
    storage.write_bytes(INDEX_JSON, json.dumps(index, indent=1).encode())
    return index


def run(args) -> dict:
    import torch
    from safetensors.torch import save as st_save

    from weightgen.data import open_storage
    from weightgen.diffusion import generate_lora, load_generator

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be >= 1")
    texts = read_texts(args.texts)
    rank, world = _dist_init(device)
    storage = open_storage(args.out)
    if rank == 0:
        storage.check_writable()  # creates a missing bucket before any rank writes
    _barrier()
    bundle = load_generator(args.generator, device=device)
    settings = {
        "generator": str(args.generator),
        "layout_hash": bundle.layout.hash,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
    }

    done = set(storage.list())
    mine = list(range(rank, len(texts), world))  # round-robin over ranks
    todo = [i for i in mine if file_name(i, texts[i]) not in done]
    rows, t0 = [], time.perf_counter()
    for b in range(0, len(todo), args.batch_size):
        idx = todo[b : b + args.batch_size]
        seed = batch_seed(args.seed, idx[0])
        loras = generate_lora(
            bundle,
            [texts[i] for i in idx],
            steps=args.steps,
            guidance=args.guidance,
            seed=seed,
        )
        for i, sd in zip(idx, loras):
            meta = {**{k: str(v) for k, v in settings.items()}, "text": texts[i]}
            meta.update(index=str(i), batch_seed=str(seed))
            storage.write_bytes(file_name(i, texts[i]), st_save(sd, metadata=meta))
            rows.append(
                {"index": i, "text": texts[i], "file": file_name(i, texts[i]), "batch_seed": seed}
            )
    seconds = time.perf_counter() - t0
    part = "".join(json.dumps(r) + "\n" for r in rows)
    storage.write_bytes(f"{INDEX_DIR}/rank-{rank:05d}.jsonl", part.encode())

    wrote, skipped = _all_sum([len(rows), len(mine) - len(todo)], device)
    slowest = _all_max(seconds, device)
    _barrier()  # every rank's files are written before rank 0 indexes them
    summary = {
        "world_size": world,
        "num_texts": len(texts),
        "written": int(wrote),
        "skipped": int(skipped),
        "seconds": round(slowest, 3),
        "concepts_per_s": round(wrote / slowest, 2) if wrote and slowest > 0 else None,
    }
    if rank == 0:
        index = write_index(storage, texts, settings)
        summary["num_done"] = index["num_done"]
    _barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    global _OWN_GROUP
    args = build_parser().parse_args(argv)
    from weightgen.data import StorageError
    from weightgen.errors import WeightgenError

    try:
        summary = run(args)
    except (WeightgenError, StorageError, FileNotFoundError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        # only a group created here: a caller's group (e.g. a training run in this process, whose
        # DeepSpeed engine keeps a reference to it) must outlive sampling
        if _OWN_GROUP and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        _OWN_GROUP = False
    if int(os.environ.get("RANK", "0")) == 0:
        print("summary: " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
