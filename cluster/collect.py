"""Ray collection driver: a plan of (concept, seed) jobs with content-hash ids, one idempotent task
per job, a bounded number in flight, a ledger of outcomes, then one finaliser that merges every
finished job of every run into block statistics and the manifest (last).

Dataset root (local path, file:// or s3://):
  dataset.json                identity: fingerprint of what determines a result (preset parts, base
                              weights, text model, block size); a run with another one is refused
  config.json  layout.json    the resolved preset; the BlockLayout and its hash
  parts/KEY-ID.tar            one per accepted job, written by its own task (webdataset, 1 sample)
  ledger/ID.STATUS.json       done | rejected | failed records (cluster/ledger.py)
  attempts/ID/*.json          one per started attempt: retried ids have more than one
  shard-HASH.tar              shard_maxcount samples packed from parts by the finaliser
  stats.safetensors           per-block mean/std, computed streaming over all samples
  rejected.json               [{key, reason[, status, attempts]}] of rejected and failed jobs
  manifest.json               written last; lists the shards of all finished jobs of all runs

A task checks the ledger first (a finished id is not redone), trains, vets, publishes its shard
(atomic, named by its content id: a second run of the same id can only rewrite the same name) and
then its ledger record, so the driver only schedules. A killed driver loses no finished work; a re-run of the same plan skips
it, a larger plan adds only the new ids.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cluster.ledger import DONE, FAILED, FINAL, REJECTED, Ledger
from weightgen.blocks import BlockLayout, BlockStatsAccumulator
from weightgen.collection import Job, lora_template, plan_jobs, run_job, vet
from weightgen.concepts import concepts as list_concepts
from weightgen.concepts import get_concept, interleave
from weightgen.config import Preset
from weightgen.data import (
    MANIFEST,
    DatasetError,
    KeyNotFoundError,
    Manifest,
    ShardInfo,
    ShardWriter,
    Storage,
    WeightSample,
    open_storage,
)
from weightgen.errors import WeightgenError
from weightgen.gan import load_base
from weightgen.gan.base import BaseNotFoundError
from weightgen.text import get_encoder

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
STATS = "stats.safetensors"
READ_THREADS = 8  # finaliser: shards fetched concurrently (S3 latency), consumed in order


class CollectError(WeightgenError):
    pass


@dataclass
class CollectSummary:
    out: str
    planned: int
    accepted: int  # planned jobs that are done (in this run or an earlier one)
    rejected: list[dict] = field(default_factory=list)  # planned jobs rejected or failed
    seconds: float = 0.0
    num_blocks: int = 0
    block_size: int = 0
    lora_params: int = 0
    workers: int = 0
    skipped: int = 0  # planned jobs already finished before this run: no work done
    ran: int = 0  # jobs this run executed to an outcome
    duplicates: int = 0  # tasks that found their id finished by someone else and wrote nothing
    retried: list[str] = field(default_factory=list)  # keys that needed more than one attempt
    samples: int = 0  # samples in the dataset's manifest (all runs)

    @property
    def concepts_per_minute(self) -> float:
        return 60.0 * self.ran / max(self.seconds, 1e-9)


# ------------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedJob:
    job: Job
    id: str  # content hash: everything that determines the result

    @property
    def key(self) -> str:
        return self.job.key

    @property
    def part(self) -> str:
        """The job's own one-sample shard (never listed in the manifest)."""
        return f"parts/{self.job.key}-{self.id}.tar"


def _sha(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(preset: Preset, base_sha256: str) -> str:
    """What every result of a dataset shares; a dataset holds results of one fingerprint only."""
    d = preset.to_dict()
    return _sha(
        d["gan"], d["lora"], d["concept"], preset.text_model, preset.collect.block_size, base_sha256
    )[:16]


def plan(
    concept_ids: list[str],
    seeds_per_concept: int,
    preset: Preset,
    base_sha256: str,
    sources: dict | None = None,
) -> list[PlannedJob]:
    """Jobs (concept x seed) with content ids: the same inputs give the same ids, anywhere.

    ``sources`` maps ids of pair sources (weightgen.concepts.sources) to the sources; their ids
    hash the source's fingerprint (file contents, pipeline weights) where a concept's hash its
    edit program."""
    sources = sources or {}
    fp = fingerprint(preset, base_sha256)
    what = {
        i: ["source", sources[i].fingerprint(), sources[i].text]
        if i in sources
        else get_concept(i).to_dict()
        for i in dict.fromkeys(concept_ids)
    }
    return [
        PlannedJob(job, _sha(fp, job.content_id(preset), what[job.concept_id])[:16])
        for job in plan_jobs(concept_ids, seeds_per_concept)
    ]


def run_pairs_job(
    job: Job,
    *,
    source,
    preset: Preset,
    base_state: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    device: str = "cpu",
) -> dict:
    """``run_job`` for a pair source: the same training and evaluation, pairs from ``source``."""
    return run_job(
        job,
        preset=preset,
        base_state=base_state,
        tokens=tokens,
        mask=mask,
        device=device,
        pairs=source.pairs,
    )


# ------------------------------------------------------------------------------------------------
# Task (runs in a Ray worker; safe to run twice)
# ------------------------------------------------------------------------------------------------


def write_part(storage: Storage, name: str, sample: WeightSample, layout: BlockLayout) -> ShardInfo:
    """One-sample shard built locally by ShardWriter (validation, fixed mtime: same sample, same
    bytes), published atomically as ``name``."""
    with tempfile.TemporaryDirectory(prefix="weightgen-part-") as tmp:
        w = ShardWriter(
            tmp,
            layout_hash=layout.hash,
            block_size=layout.block_size,
            num_blocks=layout.num_blocks,
            maxcount=1,
            prefix="part",
        )
        with w:
            w.write(sample)
        local = w.close().shards[0]
        storage.write_file(name, Path(tmp) / local.name)
    return ShardInfo(name, local.samples, local.bytes, local.sha256)


def _collect_task(ctx: dict, pj: PlannedJob, meta: dict, text: tuple) -> dict:
    storage: Storage = ctx["storage"]
    ledger = Ledger(storage)
    status = ledger.final_status(pj.id)
    if status is not None:  # finished by an earlier attempt, run or driver
        return {"id": pj.id, "key": pj.key, "status": status, "duplicate": True}
    ledger.start_attempt(pj.id)
    torch.set_num_threads(1)  # one task per CPU; torch's own threads would oversubscribe
    preset = Preset.from_dict(ctx["preset"])
    layout = BlockLayout.from_dict(ctx["layout"])
    pooled, tokens, mask = text
    use_gpu = preset.collect.num_gpus_per_task > 0 and torch.cuda.is_available()
    t0 = time.perf_counter()
    runner = ctx["runner"]
    source = ctx.get("sources", {}).get(pj.job.concept_id)
    if source is not None and runner is run_job:
        runner = functools.partial(run_pairs_job, source=source)
    result = runner(
        pj.job,
        preset=preset,
        base_state=ctx["base_state"],
        tokens=torch.from_numpy(np.asarray(tokens)),
        mask=torch.from_numpy(np.asarray(mask)),
        device="cuda" if use_gpu else "cpu",
    )
    seconds = time.perf_counter() - t0
    reason = ctx["vet"](result, preset.collect)
    if ledger.final_status(pj.id) is not None:  # another attempt finished meanwhile: write nothing
        return {"id": pj.id, "key": pj.key, "status": "skipped", "duplicate": True}
    attempts = ledger.attempts(pj.id)
    if reason is not None:
        return ledger.write(pj.id, REJECTED, key=pj.key, reason=reason, attempts=attempts)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in result["lora"].items()}
    blocks = layout.to_blocks(sd).numpy()  # (N, S) float32, not normalised
    metrics = dict(result["metrics"])
    curve = metrics.pop("curve", None)
    sample = WeightSample(
        key=pj.key,
        blocks=blocks,
        text=np.asarray(pooled, np.float32),
        tokens=np.asarray(tokens).astype(np.float16),
        meta={
            **meta,
            "training_steps": metrics.get("steps"),
            "metrics": metrics,
            "curve": curve,
        },
    )
    info = write_part(storage, pj.part, sample, layout)
    return ledger.write(
        pj.id,
        DONE,
        key=pj.key,
        shard=info.name,
        bytes=info.bytes,
        sha256=info.sha256,
        attempts=attempts,
        seconds=seconds,
    )


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def init_ray(address: str | None, num_workers: int | None):
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_workers or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return ray


@contextlib.contextmanager
def _local_base(base: str | os.PathLike) -> Iterator[Path]:
    """A base folder on this machine: ``base`` itself, or a temporary copy of an s3:// base."""
    if "://" not in str(base) or str(base).startswith("file://"):
        yield Path(open_storage(str(base)).local_path())
        return
    src = open_storage(str(base))
    with tempfile.TemporaryDirectory(prefix="weightgen-base-") as tmp:
        for name in ("generator.safetensors", "config.json", "metrics.json"):
            try:
                (Path(tmp) / name).write_bytes(src.read_bytes(name))
            except KeyNotFoundError:
                raise BaseNotFoundError(
                    f"no complete base generator at {src.uri} ({name} is missing); upload the "
                    "folder `weightgen base` wrote (RUN/base) there"
                ) from None
        yield Path(tmp)


def _open_dataset(storage: Storage, preset: Preset, layout: BlockLayout, base_sha: str) -> None:
    """Write the dataset's identity once; refuse a dataset of another identity."""
    ident = {
        "fingerprint": fingerprint(preset, base_sha),
        "layout_hash": layout.hash,
        "base_sha256": base_sha,
        "text_model": preset.text_model,
        "preset": preset.name,
    }
    try:
        old = json.loads(storage.read_bytes(DATASET_JSON))
    except KeyNotFoundError:
        old = None
    if old is None:
        if storage.exists(MANIFEST) and not storage.list("ledger/"):
            raise CollectError(
                f"{storage.uri} holds a dataset without a collection ledger (written by an older "
                "weightgen); collect into a new --out"
            )
        storage.write_bytes(DATASET_JSON, json.dumps(ident, indent=1).encode())
    elif old.get("fingerprint") != ident["fingerprint"]:
        diff = [k for k in ident if k != "fingerprint" and old.get(k) != ident[k]]
        raise CollectError(
            f"{storage.uri} was collected with other settings ({', '.join(diff) or 'preset'} "
            "differ: base, preset gan/lora/concept, text model or block size); use another --out"
        )
    storage.write_bytes("config.json", json.dumps(preset.to_dict(), indent=2).encode())
    storage.write_bytes(
        "layout.json", json.dumps({**layout.to_dict(), "hash": layout.hash}).encode()
    )


def _reason(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e  # RayTaskError wraps the task's own exception
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"task failed: {type(cause).__name__}: {first}"


def collect(
    *,
    out: str,
    base: str | os.PathLike,
    limit: int | None = None,
    concept_ids: list[str] | None = None,
    seeds_per_concept: int | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    runner: Callable | None = None,
    sources: list | None = None,
) -> CollectSummary:
    """Collect the first `limit` training concepts (families interleaved) (or `concept_ids`) x seeds into `out`.

    Re-running skips every finished job; the manifest lists all finished jobs of all runs.
    ``sources``: pair sources (``weightgen.concepts.sources``: a folder of aligned pairs, an
    image-editing pipeline) collected like concepts; with sources alone (no ``limit`` or
    ``concept_ids``) only they are collected. ``runner`` replaces ``run_job`` (same signature),
    e.g. ``cluster.synthetic.synthetic_job``.
    """
    t0 = time.perf_counter()
    with _local_base(base) as base_dir:
        base_state, preset = load_base(base_dir)
        base_sha = file_sha256(base_dir / "generator.safetensors")
    cc = preset.collect
    storage = open_storage(out)
    storage.check_writable()
    srcs = {src.id: src for src in sources or []}
    if len(srcs) != len(sources or []):
        raise CollectError("two pair sources share one id; give each its own id")
    if concept_ids is None and (limit is not None or not srcs):
        ids = [c.id for c in interleave(list_concepts("train"))]  # a prefix spans all families
        ids = ids[:limit] if limit is not None else ids
    else:
        ids = [get_concept(i).id for i in concept_ids or []]  # UnknownConceptError, early
    clash = [i for i in srcs if i in {c.id for c in list_concepts()}]
    if clash:
        raise CollectError(f"pair source id {clash[0]!r} is a catalogue concept id; rename it")
    ids += list(srcs)
    if not ids:
        raise CollectError("nothing to collect: --limit must be >= 1")
    seeds = cc.seeds_per_concept if seeds_per_concept is None else int(seeds_per_concept)
    if seeds < 1:
        raise CollectError(f"--seeds must be >= 1, got {seeds}")
    jobs = plan(ids, seeds, preset, base_sha, srcs)

    layout = BlockLayout.from_state_dict(lora_template(preset), block_size=cc.block_size)
    _open_dataset(storage, preset, layout, base_sha)
    ledger = Ledger(storage)
    state = ledger.scan()
    todo = [pj for pj in jobs if state.get(pj.id) not in FINAL]
    summary = CollectSummary(
        out=storage.uri,
        planned=len(jobs),
        accepted=0,
        num_blocks=layout.num_blocks,
        block_size=layout.block_size,
        lora_params=layout.num_params,
        skipped=len(jobs) - len(todo),
    )
    if todo:
        ray = init_ray(address, num_workers)
        summary.workers = int(ray.cluster_resources().get("CPU", 0))
        _run(ray, todo, storage, preset, layout, base_state, runner, srcs, summary, progress)
    manifest = finalize(storage)
    summary.samples = manifest.num_samples
    _summarise(jobs, ledger, summary)
    summary.seconds = time.perf_counter() - t0
    log.info(
        "%s: %d planned, %d skipped (finished earlier), %d run, %d duplicates, %d retried, "
        "%d accepted, %d rejected or failed; %d samples in the dataset",
        storage.uri,
        summary.planned,
        summary.skipped,
        summary.ran,
        summary.duplicates,
        len(summary.retried),
        summary.accepted,
        len(summary.rejected),
        summary.samples,
    )
    return summary


def _run(ray, todo, storage, preset, layout, base_state, runner, srcs, summary, progress) -> None:
    """Schedule ``todo`` with at most ``max_in_flight`` tasks pending; count outcomes."""
    cc = preset.collect
    encoder = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    cids = list(dict.fromkeys(pj.job.concept_id for pj in todo))
    concept = {c: srcs.get(c) or get_concept(c) for c in cids}
    batch = encoder.encode([concept[c].text for c in cids])  # workers never load the model
    text_refs = {
        c: ray.put((batch.pooled[k].numpy(), batch.tokens[k].numpy(), batch.mask[k].numpy()))
        for k, c in enumerate(cids)
    }
    ctx_ref = ray.put(
        {
            "storage": storage,
            "preset": preset.to_dict(),
            "layout": layout.to_dict(),
            "base_state": base_state,
            "runner": runner or run_job,
            "vet": vet,  # looked up now: a patched `vet` reaches the workers
            "sources": srcs,
        }
    )
    task = ray.remote(
        num_cpus=cc.num_cpus_per_task,
        num_gpus=cc.num_gpus_per_task,
        max_retries=cc.max_retries,
        retry_exceptions=True,
    )(_collect_task)
    ledger = Ledger(storage)
    pending: dict = {}
    queue = iter(todo)
    with tqdm(total=len(todo), desc="collect", unit="job", disable=not progress) as bar:
        while True:
            while len(pending) < cc.max_in_flight:
                pj = next(queue, None)
                if pj is None:
                    break
                cid = pj.job.concept_id
                meta = _meta(pj, layout, concept[cid])
                pending[task.remote(ctx_ref, pj, meta, text_refs[cid])] = pj
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pj = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as e:  # the task failed after its retries
                    if ledger.final_status(pj.id) is None:
                        ledger.write(
                            pj.id,
                            FAILED,
                            key=pj.key,
                            reason=_reason(e),
                            attempts=ledger.attempts(pj.id),
                        )
                    rec = {"status": FAILED}
                summary.duplicates += bool(rec.get("duplicate"))
                summary.ran += not rec.get("duplicate")
                bar.update(1)


def _meta(pj: PlannedJob, layout: BlockLayout, concept=None) -> dict:
    """The sample's meta.json, less what training adds. ``concept``: a Concept or pair source."""
    c = concept if concept is not None else get_concept(pj.job.concept_id)
    meta = {
        "concept_id": c.id,
        "text": c.text,
        "paraphrases": list(c.paraphrases),
        "family": c.family,
        "program": c.to_dict().get("program"),
        "seed": pj.job.seed,
        "layout_hash": layout.hash,
        "content_id": pj.id,
    }
    if "kind" in c.to_dict():  # a pair source: where its pairs came from
        meta["source"] = c.to_dict()
    return meta


def _summarise(jobs: list[PlannedJob], ledger: Ledger, summary: CollectSummary) -> None:
    state = ledger.scan()
    planned = {pj.id: pj for pj in jobs}
    summary.accepted = sum(state.get(i) == DONE for i in planned)
    bad = [i for i in planned if state.get(i) in (REJECTED, FAILED)]
    summary.rejected = sorted(
        (_rejection(r) for r in _read_records(ledger, [(i, state[i]) for i in bad])),
        key=lambda r: r["key"],
    )
    attempts = ledger.attempt_counts()
    summary.retried = sorted(pj.key for pj in jobs if attempts.get(pj.id, 0) > 1)


def _rejection(rec: dict) -> dict:
    r = {"key": rec.get("key"), "reason": rec.get("reason")}
    if rec.get("status") == FAILED:
        r.update(status=FAILED, attempts=rec.get("attempts"))
    return r


def _read_records(ledger: Ledger, items: list[tuple[str, str]]) -> list[dict]:
    with ThreadPoolExecutor(READ_THREADS) as ex:
        recs = ex.map(lambda it: ledger.read(*it), items)
        return [r for r in recs if r is not None]


# ------------------------------------------------------------------------------------------------
# Finaliser
# ------------------------------------------------------------------------------------------------


def _tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]


def _blocks_of(data: bytes, layout: BlockLayout) -> dict[str, np.ndarray]:
    """{key: (N, S) blocks} of a shard's samples; ValueError when unreadable or off-layout."""
    out = {}
    try:
        for m, raw in _tar_members(data):
            key, _, ext = m.name.partition(".")
            if ext == "blocks.npy":
                out[key] = np.load(io.BytesIO(raw), allow_pickle=False)
    except (tarfile.TarError, ValueError, OSError, EOFError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    for b in out.values():
        if b.shape != (layout.num_blocks, layout.block_size) or b.dtype != np.float32:
            raise ValueError(f"blocks {b.dtype} {b.shape} do not fit the layout")
    return out


def _check(data: bytes | None, nbytes: int, sha256: str, against: str) -> None:
    if data is None:
        raise ValueError(f"missing, though {against} lists it")
    if len(data) != nbytes:
        raise ValueError(f"{len(data)} bytes, {against} says {nbytes} (truncated?)")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"sha256 differs from {against} (corrupt or replaced)")


def _fetch(storage: Storage, names: list[str]) -> Iterator[bytes | None]:
    """Contents of ``names`` (None when missing), in order, READ_THREADS reads ahead."""

    def get(name: str) -> bytes | None:
        try:
            return storage.read_bytes(name)
        except KeyNotFoundError:
            return None

    with ThreadPoolExecutor(READ_THREADS) as ex:
        window = 4 * READ_THREADS
        for i in range(0, len(names), window):
            yield from ex.map(get, names[i : i + window])


def _pack(parts: list[bytes]) -> bytes:
    """One tar of the members of ``parts``, headers kept (fixed mtime): same parts, same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as out:
        for data in parts:
            for m, raw in _tar_members(data):
                out.addfile(m, io.BytesIO(raw))
    return buf.getvalue()


def _pack_name(ids: list[str]) -> str:
    return f"shard-{_sha(ids)[:16]}.tar"


def finalize(
    out: str | os.PathLike | Storage, *, maxcount: int | None = None, progress: bool = False
) -> Manifest:
    """Merge every done job of the ledger into shards of ``maxcount`` samples (default: the
    preset's ``shard_maxcount``), stats.safetensors, rejected.json and, last, manifest.json.

    Full shards of the previous manifest are kept (checked and read once for the statistics); the
    other done jobs are packed, in key order, from their per-job shards into new shards named by
    their members' ids (the same members give the same name and bytes, so a repeated or concurrent
    finalise writes the same objects). Nothing happens when the manifest already lists exactly the
    done jobs. A per-job shard that is missing or differs from its ledger record is recorded as
    failed (a re-run redoes it) and raises DatasetError naming it; no manifest is written then."""
    storage = open_storage(out)
    ledger = Ledger(storage)
    state = ledger.scan()
    done = {i for i, s in state.items() if s == DONE}
    try:
        old = Manifest.from_json(storage.read_bytes(MANIFEST))
    except (KeyNotFoundError, ValueError):
        old = None
    old_members: dict[str, list[str]] = dict(old.extra.get("members") or {}) if old else {}
    listed = [i for ids in old_members.values() for i in ids]
    if old and set(listed) == done and len(listed) == len(done) and storage.exists(STATS):
        return old
    if not done:
        raise CollectError(
            f"no job has passed vetting at {storage.uri} ({len(state)} recorded); see "
            f"{storage.join('ledger/')} for the reasons"
        )
    layout = BlockLayout.from_dict(json.loads(storage.read_bytes("layout.json")))
    ident = json.loads(storage.read_bytes(DATASET_JSON))
    if maxcount is None:
        preset = json.loads(storage.read_bytes("config.json"))
        maxcount = int(preset.get("collect", {}).get("shard_maxcount", 64))
    recs = {r["id"]: r for r in _read_records(ledger, [(i, DONE) for i in sorted(done)])}
    stats = BlockStatsAccumulator(layout)
    shards: list[ShardInfo] = []
    members: dict[str, list[str]] = {}
    bar = tqdm(total=len(recs), desc="finalise", unit="job", disable=not progress)

    # 1. full, intact shards of the previous manifest stay as they are
    keep = [
        s
        for s in (old.shards if old else [])
        if len(old_members.get(s.name, ())) == maxcount == s.samples
        and all(i in recs for i in old_members[s.name])
    ]
    for info, data in zip(keep, _fetch(storage, [s.name for s in keep])):
        try:
            _check(data, info.bytes, info.sha256, "the manifest")
            blocks = _blocks_of(data, layout)
            if len(blocks) != info.samples:
                raise ValueError(f"{len(blocks)} samples, the manifest says {info.samples}")
        except ValueError as e:  # rebuilt below from its members' own shards
            log.warning("shard %s: %s; rebuilding it", storage.join(info.name), e)
            continue
        for b in blocks.values():
            stats.update(b)
        shards.append(info)
        members[info.name] = old_members[info.name]
        bar.update(info.samples)

    # 2. the other done jobs, packed from their per-job shards
    packed = {i for ids in members.values() for i in ids}
    pool = sorted(
        (r for i, r in recs.items() if i not in packed), key=lambda r: (r["key"], r["id"])
    )
    corrupt: list[tuple[dict, str]] = []
    for k in range(0, len(pool), maxcount):
        chunk = pool[k : k + maxcount]
        parts = []
        for rec, data in zip(chunk, _fetch(storage, [r["shard"] for r in chunk])):
            try:
                _check(data, rec["bytes"], rec["sha256"], "its ledger record")
                for b in _blocks_of(data, layout).values():
                    stats.update(b)
            except ValueError as e:
                corrupt.append((rec, str(e)))
                continue
            parts.append(data)
            bar.update(1)
        if corrupt:
            continue  # keep checking, to name every corrupt shard; publish nothing
        ids = [r["id"] for r in chunk]
        name, data = _pack_name(ids), _pack(parts)
        storage.write_bytes(name, data)
        shards.append(ShardInfo(name, len(chunk), len(data), hashlib.sha256(data).hexdigest()))
        members[name] = ids
    bar.close()
    if corrupt:
        for rec, why in corrupt:
            ledger.demote(rec["id"], f"corrupt shard {rec['shard']}: {why}")
        rec, why = corrupt[0]
        more = f" (and {len(corrupt) - 1} more)" if len(corrupt) > 1 else ""
        raise DatasetError(
            f"shard {storage.join(rec['shard'])}: {why}{more}; recorded as failed: re-run the "
            "collection to redo it"
        )

    bad = [(i, s) for i, s in state.items() if s in (REJECTED, FAILED)]
    rejected = sorted((_rejection(r) for r in _read_records(ledger, bad)), key=lambda r: r["key"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STATS
        stats.finalize().save(path)
        storage.write_file(STATS, path)
    storage.write_bytes("rejected.json", json.dumps(rejected, indent=2).encode())
    m = Manifest(
        layout_hash=layout.hash,
        block_size=layout.block_size,
        num_blocks=layout.num_blocks,
        num_samples=sum(s.samples for s in shards),
        shards=shards,
        extra={
            "layout": layout.to_dict(),
            "text_model": ident.get("text_model"),
            "preset": ident.get("preset"),
            "fingerprint": ident.get("fingerprint"),
            "ledger": {"done": len(done), "rejected_or_failed": len(bad)},
            "members": members,  # shard -> content ids of its samples, in order
        },
    )
    storage.write_bytes(MANIFEST, m.to_json().encode("utf-8"))
    return m
