"""Ray collection driver: one task per (concept, seed) job, a bounded number in flight, results
vetted and written as webdataset shards, then block statistics, then the manifest (last).

Dataset folder (local path, file:// or s3://):
  shard-NNNNNN.tar   samples (DESIGN.md: blocks.npy, text.npy, tokens.npy, meta.json)
  layout.json        the BlockLayout (names, shapes, block size) and its hash
  stats.safetensors  per-block mean/std over the accepted samples
  config.json        the resolved preset
  rejected.json      jobs that failed vetting or raised, with the reason
  manifest.json      written last; readers trust only the shards it lists
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from weightgen.blocks import BlockLayout, BlockStatsAccumulator
from weightgen.collection import Job, lora_template, plan_jobs, run_job, vet
from weightgen.concepts import concepts as list_concepts
from weightgen.concepts import get_concept
from weightgen.config import Preset
from weightgen.data import ShardWriter, WeightSample, open_storage
from weightgen.gan import load_base
from weightgen.text import get_encoder

log = logging.getLogger(__name__)


@dataclass
class CollectSummary:
    out: str
    planned: int
    accepted: int
    rejected: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    num_blocks: int = 0
    block_size: int = 0
    lora_params: int = 0
    workers: int = 0

    @property
    def concepts_per_minute(self) -> float:
        return 60.0 * (self.accepted + len(self.rejected)) / max(self.seconds, 1e-9)


def _ray_task(job: Job, preset_dict: dict, base_state, tokens, mask) -> dict:
    torch.set_num_threads(1)  # one task per CPU; torch's own threads would oversubscribe
    return run_job(
        job, preset=Preset.from_dict(preset_dict), base_state=base_state, tokens=tokens, mask=mask
    )


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
) -> CollectSummary:
    """Collect the first `limit` training concepts (or `concept_ids`) into the dataset at `out`."""
    base_state, preset = load_base(base)
    cc = preset.collect
    storage = open_storage(out)
    storage.check_writable()
    if concept_ids is None:
        ids = [c.id for c in list_concepts("train")]
        ids = ids[:limit] if limit is not None else ids
    else:
        ids = [get_concept(i).id for i in concept_ids]  # UnknownConceptError early, on the driver
    if not ids:
        raise ValueError("nothing to collect: --limit must be >= 1")
    jobs = plan_jobs(ids, seeds_per_concept or cc.seeds_per_concept)

    # texts are encoded once, on the driver: workers never load the text model
    encoder = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    texts = {i: get_concept(i).text for i in ids}
    batch = encoder.encode([texts[i] for i in ids])
    text_of = {i: batch[k] for k, i in enumerate(ids)}

    layout = BlockLayout.from_state_dict(lora_template(preset), block_size=cc.block_size)
    stats = BlockStatsAccumulator(layout)
    summary = CollectSummary(
        out=storage.uri,
        planned=len(jobs),
        accepted=0,
        num_blocks=layout.num_blocks,
        block_size=layout.block_size,
        lora_params=layout.num_params,
    )

    ray = init_ray(address, num_workers)
    summary.workers = int(ray.cluster_resources().get("CPU", 0))
    task = ray.remote(
        num_cpus=cc.num_cpus_per_task, num_gpus=cc.num_gpus_per_task, max_retries=cc.max_retries
    )(_ray_task)
    base_ref = ray.put(base_state)
    preset_dict = preset.to_dict()

    t0 = time.perf_counter()
    writer = ShardWriter(
        storage,
        layout_hash=layout.hash,
        block_size=layout.block_size,
        num_blocks=layout.num_blocks,
        maxcount=cc.shard_maxcount,
        extra={"layout": layout.to_dict(), "text_model": encoder.model_id, "preset": preset.name},
    )
    with writer, tqdm(total=len(jobs), desc="collect", unit="concept", disable=not progress) as bar:
        pending: dict = {}
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < cc.max_in_flight:
                job = queue.pop(0)
                t = text_of[job.concept_id]
                pending[task.remote(job, preset_dict, base_ref, t.tokens, t.mask)] = job
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the task failed after its retries
                    reason = f"task failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    summary.rejected.append({"key": job.key, "reason": reason})
                    bar.update(1)
                    continue
                reason = vet(result, cc)
                if reason is not None:
                    summary.rejected.append({"key": job.key, "reason": reason})
                else:
                    sd = {k: torch.from_numpy(np.array(v)) for k, v in result["lora"].items()}
                    blocks = layout.to_blocks(sd).numpy()  # (N, S) float32, not normalised
                    concept = get_concept(job.concept_id)
                    t = text_of[job.concept_id]
                    metrics = {k: v for k, v in result["metrics"].items() if k != "curve"}
                    meta = {
                        "concept_id": concept.id,
                        "text": concept.text,
                        "paraphrases": list(concept.paraphrases),
                        "family": concept.family,
                        "program": concept.to_dict().get("program"),
                        "seed": job.seed,
                        "layout_hash": layout.hash,
                        "training_steps": result["metrics"]["steps"],
                        "metrics": metrics,
                        "curve": result["metrics"]["curve"],
                    }
                    writer.write(
                        WeightSample(
                            key=job.key,
                            blocks=blocks,
                            text=t.pooled.numpy(),
                            tokens=t.tokens.numpy().astype(np.float16),
                            meta=meta,
                        )
                    )
                    stats.update(blocks)
                    summary.accepted += 1
                bar.update(1)
                bar.set_postfix(ok=summary.accepted, rejected=len(summary.rejected))
        if summary.accepted == 0:
            raise RuntimeError(
                f"no concept passed vetting ({len(summary.rejected)} rejected; first: "
                f"{summary.rejected[0]['reason'] if summary.rejected else 'none'})"
            )
        _write_side_files(storage, layout, stats, preset, summary)
        summary.seconds = time.perf_counter() - t0
    return summary


def _write_side_files(storage, layout, stats, preset, summary) -> None:
    """layout.json, stats.safetensors, config.json, rejected.json — all before the manifest."""
    storage.write_bytes(
        "layout.json", json.dumps({**layout.to_dict(), "hash": layout.hash}).encode()
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stats.safetensors"
        stats.finalize().save(path)
        storage.write_file("stats.safetensors", path)
    storage.write_bytes("config.json", json.dumps(preset.to_dict(), indent=2).encode())
    storage.write_bytes("rejected.json", json.dumps(summary.rejected, indent=2).encode())
