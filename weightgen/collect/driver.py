"""Ray collection driver: a plan of (concept, seed) jobs with content-hash ids, one idempotent task
per job, a bounded number in flight, a ledger of outcomes, then one finaliser that merges every
finished job of every run into block statistics and the manifest (last).

Dataset root (local path, file:// or s3://):
  dataset.json                identity: fingerprint of what determines a result (preset parts, base
                              weights, text model, block size); a run with another one is refused
  config.json  layout.json    the resolved preset; the BlockLayout and its hash
  parts/KEY-ID.tar            one per accepted job, written by its own task (webdataset, 1 sample)
  ledger/ID.STATUS.json       done | rejected | failed records (ledger.py)
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
import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from weightgen.blocks import BlockLayout
from weightgen.collect.finalize import DATASET_JSON, CollectError, content_sha, finalize
from weightgen.collect.job import Job, lora_template, plan_jobs, run_job, vet
from weightgen.collect.ledger import DONE, FAILED, FINAL, REJECTED, Ledger, read_records, rejection
from weightgen.concepts import Splits, get_concept
from weightgen.concepts import concepts as list_concepts
from weightgen.config import CollectConfig, Preset, override
from weightgen.data import (
    MANIFEST,
    KeyNotFoundError,
    ShardInfo,
    ShardWriter,
    Storage,
    WeightSample,
    open_storage,
)
from weightgen.gan import load_base
from weightgen.gan.base import BaseNotFoundError
from weightgen.pool import as_completed, ray_session
from weightgen.text import get_encoder

log = logging.getLogger(__name__)


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


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(preset: Preset, base_sha256: str) -> str:
    """What every result of a dataset shares; a dataset holds results of one fingerprint only."""
    d = preset.to_dict()
    return content_sha(
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
        PlannedJob(job, content_sha(fp, job.content_id(preset), what[job.concept_id])[:16])
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


def default_concept_ids(splits: Splits, limit: int | None) -> list[str]:
    """The recipe's training concepts (its `train` split: no novel operation, no validation
    concept), families interleaved so that a prefix (`limit`) spans every family."""
    ids = [c.id for c in splits.collection_order()]
    return ids[:limit] if limit is not None else ids


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
    collect_cfg: CollectConfig | None = None,
    overrides: Sequence[str] = (),
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
    if collect_cfg is not None:  # a recipe's [collect] over the one saved with the base
        preset = dataclasses.replace(preset, collect=collect_cfg)
    preset = override(preset, overrides)  # "collect.FIELD=VALUE" items
    cc = preset.collect
    limit = cc.limit if limit is None else limit
    storage = open_storage(out)
    storage.check_writable()
    srcs = {src.id: src for src in sources or []}
    if len(srcs) != len(sources or []):
        raise CollectError("two pair sources share one id; give each its own id")
    if concept_ids is None and (limit is not None or not srcs):
        ids = default_concept_ids(Splits.of(preset), limit)
    else:
        ids = [get_concept(i).id for i in concept_ids or []]  # UnknownConceptError, early
    clash = [i for i in srcs if i in {c.id for c in list_concepts()}]
    if clash:
        raise CollectError(f"pair source id {clash[0]!r} is a catalogue concept id; rename it")
    ids += list(srcs)
    if not ids:
        raise CollectError("nothing to collect: collect.limit must be >= 1")
    seeds = cc.seeds_per_concept if seeds_per_concept is None else int(seeds_per_concept)
    if seeds < 1:
        raise CollectError(f"collect.seeds_per_concept must be >= 1, got {seeds}")
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
        with ray_session(address, num_workers) as ray:
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

    def submit(pj: PlannedJob):
        cid = pj.job.concept_id
        return task.remote(ctx_ref, pj, _meta(pj, layout, concept[cid]), text_refs[cid])

    with tqdm(total=len(todo), desc="collect", unit="job", disable=not progress) as bar:
        for pj, ref in as_completed(ray, submit, todo, max_in_flight=cc.max_in_flight):
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
        (rejection(r) for r in read_records(ledger, [(i, state[i]) for i in bad])),
        key=lambda r: r["key"],
    )
    attempts = ledger.attempt_counts()
    summary.retried = sorted(pj.key for pj in jobs if attempts.get(pj.id, 0) > 1)
