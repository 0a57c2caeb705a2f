"""Batch sampling: one generated LoRA `.safetensors` per concept text, over torchrun ranks or Ray.

  python jobs/sample.py --generator runs/demo/generator --texts texts.txt --out runs/demo/loras
  DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 jobs/sample.py --generator R \
      --texts texts.txt --out s3://bucket/loras
  torchrun --nnodes N --nproc_per_node G ... jobs/sample.py --generator R --texts T --out s3://b/p
  python jobs/sample.py --ray --workers 2 --generator R --texts T --out s3://b/p
  ray job submit --working-dir . -- python jobs/sample.py --ray --workers 64 --generator R ...

The texts file holds one concept text per line (blank lines are skipped); text i (0-based over the
non-blank lines) goes to rank i % world_size (round-robin, as DiT's sample_ddp.py) and is written as
`NNNNNNN-HHHHHHHHHH.safetensors` (index, then the first 10 hex digits of the text's sha256) with
the text, generator and sampling settings in the safetensors metadata. Every write is atomic
(weightgen.data storage), so a file that exists is complete: a re-run skips it.

Index: each rank writes `index/rank-RRRRR.jsonl` (the files it wrote in this run); after a barrier
rank 0 writes `index.json` over every text whose file exists, whichever run wrote it. The batch's
noise comes from seed (seed, first index of the batch); the seed is stored in each file.

--ray: the driver (one process, no torchrun) lists what exists, cuts the texts still to do into
chunks of --chunk-size and runs one Ray task per chunk (`ray.wait` keeps at most --workers in
flight; a failed task is retried, which is safe: its files are rewritten whole with the same
seeds). The driver loads the generator once to check it and puts its files in Ray's object store;
each task loads it once from there (no shared file system needed), samples its chunk in batches
and writes its files and `index/task-CCCCC.jsonl`; the driver then writes `index.json`. Ray: the
cluster at RAY_ADDRESS when set (e.g. inside `ray job submit`), else a local Ray with --workers CPUs,
stopped at the end. A batch's seed is (seed, first index of the batch) as under torchrun, and
batches are cut from each task's chunk: with one process, nothing skipped and --chunk-size a
multiple of --batch-size, both modes write the same batches, hence the same weights.

Rank 0 (the driver under --ray) prints one line `summary: {json}`; errors a user can cause are one
line on stderr, status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

from weightgen.config import SampleConfig, add_config_args

# the file scheme (names, metadata, index.json) is weightgen.lorafiles', shared with `weightgen sample`
from weightgen.lorafiles import INDEX_DIR, file_name, write_index, write_loras


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", required=True, help="generator run folder (RUN/generator)")
    p.add_argument("--texts", required=True, help="text file: one concept text per line")
    p.add_argument("--out", required=True, help="output folder or URI (path, file://, s3://)")
    add_config_args(p)  # the [sample] section: steps, guidance, seed
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass per rank")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per rank / Ray task")
    p.add_argument("--ray", action="store_true", help="one Ray task per chunk of texts")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="--ray: Ray tasks in flight (a local Ray gets this many CPUs; default: all cores)",
    )
    p.add_argument("--chunk-size", type=int, default=256, help="--ray: texts per Ray task")
    p.add_argument(
        "--gpus-per-task", type=float, default=0.0, help="--ray: GPUs per task (0: sample on CPU)"
    )
    return p


def read_texts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"texts file {path} not found (give one concept text per line)")
    texts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"texts file {path} holds no texts (give one concept text per line)")
    return texts


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


def _settings(args, bundle) -> dict:
    return {
        "generator": str(args.generator),
        "layout_hash": bundle.layout.hash,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
    }


def _check_args(args) -> None:
    if args.steps < 1 or args.batch_size < 1 or args.chunk_size < 1:
        raise ValueError("sample.steps, --batch-size and --chunk-size must be >= 1")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be >= 1")


def run(args) -> dict:
    import torch

    from weightgen.data import open_storage
    from weightgen.diffusion import load_generator

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    _check_args(args)
    texts = read_texts(args.texts)
    rank, world = _dist_init(device)
    storage = open_storage(args.out)
    if rank == 0:
        storage.check_writable()  # creates a missing bucket before any rank writes
    _barrier()
    bundle = load_generator(args.generator, device=device)
    settings = _settings(args, bundle)

    done = set(storage.list())
    mine = list(range(rank, len(texts), world))  # round-robin over ranks
    todo = [i for i in mine if file_name(i, texts[i]) not in done]
    t0 = time.perf_counter()
    sample = SampleConfig(steps=args.steps, guidance=args.guidance, seed=args.seed)
    rows = write_loras(
        storage, [(i, texts[i]) for i in todo], settings, sample=sample,
        batch_size=args.batch_size, bundle=bundle,
    )  # fmt: skip
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


# --------------------------------------------------------------------------------------------
# Ray tasks
# --------------------------------------------------------------------------------------------

GENERATOR_FILES = ("generator.json", "layout.json", "stats.safetensors")


def pack_generator(root: str | os.PathLike) -> dict[str, bytes]:
    """A generator export's files {relative path: bytes} (what load_generator reads)."""
    from weightgen.diffusion.neighbors import BANK_FILE

    root = Path(root)
    files = {name: (root / name).read_bytes() for name in GENERATOR_FILES}
    if (root / BANK_FILE).is_file():  # a retrieval-augmented generator's bank
        files[BANK_FILE] = (root / BANK_FILE).read_bytes()
    for p in sorted((root / "model").iterdir()):
        if p.is_file():
            files[f"model/{p.name}"] = p.read_bytes()
    return files


def sample_chunk(
    task: int, items: list[tuple[int, str]], generator: dict[str, bytes], out: str,
    settings: dict, opts: dict,
) -> dict:  # fmt: skip
    """One Ray task: load the generator once, write the chunk's LoRAs and index part."""
    import tempfile

    import torch

    from weightgen.data import open_storage
    from weightgen.diffusion import load_generator

    t0 = time.perf_counter()
    torch.set_num_threads(opts["threads"])
    device = "cuda" if opts["gpus"] > 0 and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="wg-generator-") as tmp:
        for name, data in generator.items():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_bytes(data)
        bundle = load_generator(tmp, device=device)
    storage = open_storage(out)
    t1 = time.perf_counter()
    sample = SampleConfig(steps=opts["steps"], guidance=opts["guidance"], seed=opts["seed"])
    rows = write_loras(
        storage, items, settings, sample=sample, batch_size=opts["batch_size"], bundle=bundle
    )
    part = "".join(json.dumps(r) + "\n" for r in rows)
    storage.write_bytes(f"{INDEX_DIR}/task-{task:05d}.jsonl", part.encode())
    t2 = time.perf_counter()
    return {"task": task, "written": len(rows), "load_s": t1 - t0, "sample_s": t2 - t1}


def run_ray(args) -> dict:
    """The --ray driver: chunks of the texts still to do, one Ray task each, then index.json."""
    from weightgen.data import open_storage
    from weightgen.diffusion import load_generator

    _check_args(args)
    texts = read_texts(args.texts)
    storage = open_storage(args.out)
    storage.check_writable()
    bundle = load_generator(args.generator)  # one-line errors before Ray starts
    settings = _settings(args, bundle)
    del bundle
    done = set(storage.list())
    todo = [i for i in range(len(texts)) if file_name(i, texts[i]) not in done]
    for key in storage.list(f"{INDEX_DIR}/"):  # the parts of an earlier run's tasks
        if key.startswith(f"{INDEX_DIR}/task-"):
            storage.delete(key)
    chunks = [todo[k : k + args.chunk_size] for k in range(0, len(todo), args.chunk_size)]
    workers = args.workers or os.cpu_count() or 1
    threads = args.threads or 1
    opts = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, threads=threads,
                batch_size=args.batch_size, gpus=args.gpus_per_task)  # fmt: skip

    results, ray_start, seconds = [], 0.0, 0.0
    if chunks:
        from weightgen.pool import as_completed, ray_session

        t0 = time.perf_counter()
        with ray_session(workers=workers) as ray:
            t1 = time.perf_counter()
            ray_start = t1 - t0
            task = ray.remote(num_cpus=threads, num_gpus=args.gpus_per_task, max_retries=2)(
                sample_chunk
            )
            gen_ref = ray.put(pack_generator(args.generator))
            out = str(storage.uri)

            def submit(c: int):
                items = [(i, texts[i]) for i in chunks[c]]
                return task.remote(c, items, gen_ref, out, settings, opts)

            for _, ref in as_completed(ray, submit, range(len(chunks)), max_in_flight=workers):
                results.append(ray.get(ref))
            seconds = time.perf_counter() - t1
    wrote = sum(r["written"] for r in results)
    index = write_index(storage, texts, settings)
    return {
        "ray_workers": workers,
        "tasks": len(chunks),
        "num_texts": len(texts),
        "written": wrote,
        "skipped": len(texts) - len(todo),
        # from the first task submitted to the last result: worker start-up, each task's
        # generator + text model load, sampling and writes (Ray's own start-up: ray_start_s)
        "seconds": round(seconds, 3),
        "concepts_per_s": round(wrote / seconds, 2) if wrote and seconds > 0 else None,
        "ray_start_s": round(ray_start, 3),
        "task_load_s": round(sum(r["load_s"] for r in results), 3),
        "task_sample_s": round(sum(r["sample_s"] for r in results), 3),
        "num_done": index["num_done"],
    }


def main(argv: list[str] | None = None) -> int:
    global _OWN_GROUP
    args = build_parser().parse_args(argv)
    from weightgen.data import StorageError
    from weightgen.errors import WeightgenError

    try:
        from weightgen.config import load_config

        sc = load_config(args.config, args.set).sample
        args.steps, args.guidance, args.seed = sc.steps, sc.guidance, sc.seed
        summary = run_ray(args) if args.ray else run(args)
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
