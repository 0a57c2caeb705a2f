"""Benchmark of collection at scale on this machine. Prints a table, writes JSON.

    python -m cluster.bench --base runs/demo/base --out runs/bench/cluster.json

1. Scheduling: N (default 5,000) jobs through a local Ray with the driver's ray.wait back-pressure:
   (a) no-op tasks: Ray's own cost per job; (b) the whole collection path with training replaced
   by `synthetic_job` (ledger checks, attempt marker, one-sample shard, ledger record per job, then
   the finaliser packing shards and computing statistics); (c) the same plan again: all skipped.
   Jobs per second, wall milliseconds per job, driver RSS (start, peak, end; the text model is
   loaded before the measurement).
2. Real tiny-preset collection (training included) of the same concepts with 1 and 2 workers:
   concepts per minute (whole run: Ray start, text encoding, finalise included), the 2/1 ratio,
   and the median training time per task (it grows when the cores are not really free).
3. Upload throughput: the same files (16 x 1 MiB, 1 x 96 MiB: multipart) written to a local
   SeaweedFS (S3Storage: each object one PUT, or one multipart upload; and through boto3 directly,
   the reference) and to a local folder (temporary file, rename), in MB/s.
The machine is shared: the 1-minute load average at start and end is recorded.

    python -m cluster.bench --project runs/bench/cluster.json --gpus 64 --out docs/results/scale.json

projects a measured result to a GPU cluster's concepts per day (`project`: the limits of the
driver, compute and storage, with the assumptions written beside them).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


class RSS:
    """Peak resident set size of this process, sampled every 50 ms while active (MiB)."""

    def __init__(self):
        self.proc = psutil.Process()
        self.start = self.peak = self.end = self._now()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> float:
        return self.proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._now())

    def __enter__(self) -> RSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.end = self._now()
        self.peak = max(self.peak, self.end)

    def to_dict(self) -> dict:
        return {"start_mib": self.start, "peak_mib": self.peak, "end_mib": self.end}


def _noop(i: int) -> dict:
    return {"i": i}


def bench_noop(ray, n: int, in_flight: int) -> dict:
    task = ray.remote(num_cpus=1, max_retries=2, retry_exceptions=True)(_noop)
    ray.get([task.remote(-1) for _ in range(4)])  # workers up
    with RSS() as rss:
        t0 = time.perf_counter()
        pending, it, done_n = set(), iter(range(n)), 0
        while True:
            while len(pending) < in_flight:
                i = next(it, None)
                if i is None:
                    break
                pending.add(task.remote(i))
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.discard(ref)
                ray.get(ref)
                done_n += 1
        secs = time.perf_counter() - t0
    return {"jobs": done_n, "in_flight": in_flight, "seconds": secs, "rss": rss.to_dict()}


def bench_pipeline(base: str, out: str, ids: list[str], seeds: int) -> dict:
    from cluster.synthetic import synthetic_job
    from weightgen.collect import collect

    run = functools.partial(
        collect,
        out=out,
        base=base,
        concept_ids=ids,
        seeds_per_concept=seeds,
        runner=synthetic_job,
        progress=False,
    )
    with RSS() as rss:
        s = run()
    t0 = time.perf_counter()
    with RSS() as rss2:
        again = run()  # the same plan: every job is already done
    return {
        "jobs": s.planned,
        "accepted": s.accepted,
        "seconds": s.seconds,
        "rss": rss.to_dict(),
        "rerun": {
            "skipped": again.skipped,
            "ran": again.ran,
            "seconds": time.perf_counter() - t0,
            "rss": rss2.to_dict(),
        },
        "samples": s.samples,
    }


def bench_real(base: str, root: Path, ids: list[str]) -> dict:
    import ray

    from weightgen.collect import DONE, Ledger, collect
    from weightgen.data import open_storage

    res = {}
    for w in (1, 2):
        if ray.is_initialized():
            ray.shutdown()
        s = collect(
            out=str(root / f"real-w{w}"), base=base, concept_ids=ids, num_workers=w, progress=False
        )
        ray.shutdown()
        ledger = Ledger(open_storage(str(root / f"real-w{w}")))
        task_s = [ledger.read(i, st)["seconds"] for i, st in ledger.scan().items() if st == DONE]
        res[str(w)] = {
            "concepts": s.planned,
            "accepted": s.accepted,
            "seconds": s.seconds,
            "concepts_per_minute": s.concepts_per_minute,
            "median_task_train_seconds": statistics.median(task_s),
        }
    res["scaling_2_over_1"] = res["2"]["concepts_per_minute"] / res["1"]["concepts_per_minute"]
    return res


def bench_upload(root: Path, sizes_mib: list[float], repeat: int) -> dict:
    from cluster.seaweed import weed_server
    from weightgen.data import open_storage

    files = []
    rng = np.random.default_rng(0)
    for k, mib in enumerate(sizes_mib):
        p = root / f"src-{k}.bin"
        p.write_bytes(rng.integers(0, 256, int(mib * 2**20), dtype=np.uint8).tobytes())
        files.append(p)
    total = sum(p.stat().st_size for p in files) * repeat

    def run(storage) -> float:
        t0 = time.perf_counter()
        for r in range(repeat):
            for p in files:
                storage.write_file(f"r{r}-{p.name}", p)
        return time.perf_counter() - t0

    disk_s = run(open_storage(str(root / "disk")))
    with weed_server(root / "weed") as weed:
        saved = {k: os.environ.get(k) for k in weed.env()}
        os.environ.update(weed.env())
        try:
            st = open_storage("s3://wg-bench/upload")
            st.check_writable()
            s3_s = run(st)
            # the same bytes through boto3 directly: what the storage layer adds
            t0 = time.perf_counter()
            for r in range(repeat):
                for p in files:
                    st._client.upload_file(
                        str(p), st.bucket, st._key(f"raw-r{r}-{p.name}"), Config=st._transfer
                    )
            raw_s = time.perf_counter() - t0
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return {
        "bytes": total,
        "files": len(files) * repeat,
        "sizes_mib": sizes_mib,
        "disk_mb_s": total / 1e6 / disk_s,
        "s3_mb_s": total / 1e6 / s3_s,
        "s3_plain_put_mb_s": total / 1e6 / raw_s,
        "disk_seconds": disk_s,
        "s3_seconds": s3_s,
        "multipart_threshold_mib": st.multipart_threshold / 2**20,
    }


def project(res: dict, *, gpus: int, bytes_per_job: float) -> dict:
    """Concepts per day of a `gpus`-GPU Ray cluster, from this machine's measured costs, with
    every assumption written beside the figure. The three limits:
    - the driver: the whole collection path (ledger, attempt marker, shard, record, finaliser)
      measured at `pipeline` ms per job, taken as serial in one driver (an upper bound on its cost);
    - compute: the median training time of one real tiny job on one CPU core (`real`, 1 worker),
      with one job per GPU at a time and a GPU no faster than that core (a floor: a 64 px,
      16-channel LoRA batch does not fill a GPU; the time of a job on a GPU is not measured yet);
    - storage: the mean bytes of one job's shard part over the S3Storage upload rate measured to
      one local SeaweedFS endpoint."""
    day = 86_400.0
    p = res["pipeline"]
    driver_s = p["seconds"] / p["jobs"]
    job_s = res["real"]["1"]["median_task_train_seconds"]
    s3_bps = res["upload"]["s3_mb_s"] * 1e6
    limits = {
        "driver": day / driver_s,
        "compute": gpus * day / job_s,
        "storage": day * s3_bps / bytes_per_job,
    }
    bound = min(limits, key=limits.get)
    return {
        "gpus": gpus,
        "concepts_per_day": limits[bound],
        "bound_by": bound,
        "limits_concepts_per_day": limits,
        "inputs": {
            "driver_seconds_per_job": driver_s,
            "job_train_seconds_one_cpu_core": job_s,
            "s3_upload_bytes_per_second": s3_bps,
            "bytes_per_job": bytes_per_job,
        },
        "assumptions": [
            "one seed per concept: a concept is one job",
            "the driver's whole measured collection path per job is serial (the tasks' share of it "
            "runs on the workers in a real cluster, so the driver limit is higher)",
            "one job per GPU at a time, no faster than one CPU core of this machine (a floor; "
            "fractional GPUs, e.g. num_gpus=0.125, would run several at once)",
            "one S3 endpoint at the rate measured to a local SeaweedFS",
            "no failures, retries or stragglers",
        ],
    }


def _project_main(args) -> int:
    res = json.loads(Path(args.project).read_text())
    parts = list(Path(args.dataset).glob("parts/*.tar"))
    if not parts:
        raise SystemExit(f"cluster.bench: no parts/*.tar under {args.dataset} to size a job by")
    bytes_per_job = sum(p.stat().st_size for p in parts) / len(parts)
    out = {
        "command": "python -m cluster.bench " + " ".join(sys.argv[1:]),
        "measurement_file": args.project,
        "measurement": res,
        "projection": project(res, gpus=args.gpus, bytes_per_job=bytes_per_job),
    }
    pr = out["projection"]
    print(f"{pr['gpus']} GPUs: {pr['concepts_per_day']:,.0f} concepts/day, bound by "
          f"{pr['bound_by']} (" + ", ".join(f"{k} {v:,.0f}" for k, v in
                                             pr["limits_concepts_per_day"].items()) + ")")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="runs/demo/base", help="a base folder (weightgen base)")
    ap.add_argument("--out", default="runs/bench/cluster.json")
    ap.add_argument("--jobs", type=int, default=5000, help="scheduling benchmark jobs")
    ap.add_argument("--real-concepts", type=int, default=6, help="real collection: concepts")
    ap.add_argument("--only", choices=["sched", "real", "upload"], action="append", default=None)
    ap.add_argument("--project", default=None, metavar="RESULT.json",
                    help="instead of measuring: project a measured result to a GPU cluster")  # fmt: skip
    ap.add_argument("--gpus", type=int, default=64, help="--project: the cluster's GPUs")
    ap.add_argument("--dataset", default="runs/tiny/dataset",
                    help="--project: a collected data set, to size one job's shard part")  # fmt: skip
    args = ap.parse_args(argv)
    if args.project:
        return _project_main(args)
    parts = args.only or ["sched", "real", "upload"]

    import ray

    from weightgen.concepts import concepts
    from weightgen.gan import load_base
    from weightgen.text import get_encoder

    _, preset = load_base(args.base)  # a clear error before anything starts
    res: dict = {"preset": preset.name, "base": args.base, "cpus": os.cpu_count()}
    res["command"] = "python -m cluster.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    res["loadavg_start"] = os.getloadavg()
    train = [c.id for c in concepts("train")]
    with tempfile.TemporaryDirectory(prefix="weightgen-bench-") as tmp:
        tmp = Path(tmp)
        if "sched" in parts:
            seeds = -(-args.jobs // len(train))
            ids = train[: -(-args.jobs // seeds)]
            # the text model loaded and the texts cached first: RSS below is the driver's own
            get_encoder(preset.text_model, preset.gan.max_text_tokens).encode(
                [c.text for c in concepts("train")]
            )
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            try:
                res["noop"] = {
                    str(k): bench_noop(ray, args.jobs, k)
                    for k in (preset.collect.max_in_flight, 64)
                }
                res["pipeline"] = bench_pipeline(args.base, str(tmp / "synthetic"), ids, seeds)
            finally:
                ray.shutdown()
        if "real" in parts:
            res["real"] = bench_real(args.base, tmp, train[: args.real_concepts])
        if "upload" in parts:
            res["upload"] = bench_upload(tmp, [1.0] * 16 + [96.0], repeat=2)
    res["loadavg_end"] = os.getloadavg()

    _print(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _print(res: dict) -> None:
    rows = []
    for k, r in res.get("noop", {}).items():
        rows.append(
            (
                f"no-op tasks, {k} in flight",
                f"{r['jobs']} jobs",
                f"{r['jobs'] / r['seconds']:.0f} jobs/s",
                f"{1e3 * r['seconds'] / r['jobs']:.2f} ms/job",
                f"driver RSS {r['rss']['start_mib']:.0f}->{r['rss']['peak_mib']:.0f} MiB",
            )
        )
    if "pipeline" in res:
        p, r = res["pipeline"], res["pipeline"]["rerun"]
        rows.append(
            (
                "collect path, synthetic training",
                f"{p['jobs']} jobs",
                f"{p['jobs'] / p['seconds']:.0f} jobs/s",
                f"{1e3 * p['seconds'] / p['jobs']:.2f} ms/job",
                f"driver RSS {p['rss']['start_mib']:.0f}->{p['rss']['peak_mib']:.0f} MiB",
            )
        )
        rows.append(
            (
                "same plan again (all skipped)",
                f"{r['skipped']} skipped",
                f"{r['ran']} ran",
                f"{r['seconds']:.1f} s",
                f"driver RSS peak {r['rss']['peak_mib']:.0f} MiB",
            )
        )
    if "real" in res:
        for w in ("1", "2"):
            x = res["real"][w]
            rows.append(
                (
                    f"real tiny collection, {w} worker(s)",
                    f"{x['concepts']} concepts",
                    f"{x['concepts_per_minute']:.1f} concepts/min",
                    f"{x['seconds']:.1f} s",
                    f"median train time per task {x['median_task_train_seconds']:.1f} s",
                )
            )
        ratio = f"{res['real']['scaling_2_over_1']:.2f}x"
        rows.append(("scaling 2 / 1 workers", ratio, "", "", ""))
    if "upload" in res:
        u = res["upload"]
        mb = f"{u['bytes'] / 1e6:.0f} MB"
        for name, rate, secs in (
            ("upload, SeaweedFS, S3Storage", u["s3_mb_s"], u["s3_seconds"]),
            ("upload, SeaweedFS, boto3 directly", u["s3_plain_put_mb_s"], None),
            ("write, local disk", u["disk_mb_s"], u["disk_seconds"]),
        ):
            rows.append((name, mb, f"{rate:.0f} MB/s", f"{secs:.2f} s" if secs else "", ""))
    rows.append(
        (
            "load average (1 min), start / end",
            f"{res['loadavg_start'][0]:.1f}",
            f"{res['loadavg_end'][0]:.1f}",
            "",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    raise SystemExit(main())
