"""One concept fine-tuned from every initialisation, on the same images, seeds and evaluation
schedule (pure: runs in-process or inside a Ray task, `weightgen.pool.run_tasks`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from weightgen.config import BenchConfig, Preset


def concept_runs(
    *,
    preset: Preset,
    base_state: dict[str, torch.Tensor],
    concept_id: str,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    inits: dict[str, dict | None],
    lrs: dict[str, float],
    cfg: BenchConfig,
    offsets: dict[str, float] | None = None,
    preview: int = 1,
    threads: int | None = 1,
) -> dict:
    """Fine-tune one concept from every initialisation in `inits` ({method: LoRA or None}).
    Returns {"runs": {method: {"curve", "offset_s", "lr", "steps"}}, "preview": {"input", "target",
    method: {"start", "end"}}} with preview images (3,H,W) in [0,1]."""
    from weightgen.concepts import get_concept
    from weightgen.eval.metrics import eval_schedule, plateaued
    from weightgen.eval.newconcept import TRAIN_SEED, eval_pairs, finetune, train_pairs

    if threads is not None and not torch.cuda.is_available():
        torch.set_num_threads(threads)  # every method timed under the same thread count
    concept = get_concept(concept_id)
    pairs = eval_pairs(concept, preset)
    train = train_pairs(concept, preset)  # built once, shared by every method
    ccfg = dataclasses.replace(preset.concept, eval_every=cfg.eval_every)
    # FID needs every evaluation output of every method at the end; otherwise `preview` images
    px = pairs[0] if cfg.fid_weights else pairs[0][:preview]
    out_runs, prev = {}, {"input": pairs[0][:preview], "target": pairs[1][:preview]}
    for m, init in inits.items():
        scratch = m == "scratch"
        # lora-zero with hard_max_steps trains to its plateau: its quality is the hard target
        to_plateau = m == "lora-zero" and cfg.hard_max_steps > 0
        steps = cfg.scratch_max_steps if scratch else cfg.lora_steps
        if to_plateau:
            steps = max(steps, cfg.hard_max_steps)
        plateau = None
        if scratch or cfg.lora_plateau or to_plateau:

            def plateau(curve):
                return plateaued(
                    [vars(p) for p in curve],
                    patience_steps=cfg.patience_steps,
                    min_gain=cfg.min_gain_db,
                )

        r = finetune(
            m,
            preset=preset,
            base_state=base_state,
            concept=concept,
            tokens=tokens,
            mask=mask,
            init_lora=init,
            pairs=pairs,
            train=train,
            cfg=ccfg,
            seed=TRAIN_SEED + cfg.seed,
            steps=steps,
            lr=lrs[m],
            eval_at=eval_schedule(steps, every=cfg.eval_every),
            stop=plateau,
            preview=px,
        )
        out_runs[m] = {
            "curve": [vars(p) for p in r.curve],
            "offset_s": (offsets or {}).get(m, 0.0),
            "lr": lrs[m],
            "steps": r.steps,
        }
        prev[m] = r.extra.get("preview")
    if cfg.fid_weights:
        prev = {k: _first(v, preview) for k, v in prev.items()} | {"all": prev}
    return {"runs": out_runs, "preview": prev}


def _first(v, k: int):
    if isinstance(v, dict):
        return {kk: vv[:k] for kk, vv in v.items()}
    return v[:k]


class FinetuneCache:
    """Finished concepts of a benchmark run, so an interrupted run resumes: OUT/finetunes/ID.json
    ({"key", "runs"}) and ID.safetensors (the preview images, flattened "a/b" keys). A concept is
    reused only under the same key (what its runs depend on: `job_key`)."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "finetunes"

    @staticmethod
    def job_key(parts: dict) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, cid: str, key: str) -> dict | None:
        from safetensors.torch import load_file

        meta, tensors = self.dir / f"{cid}.json", self.dir / f"{cid}.safetensors"
        try:
            rec = json.loads(meta.read_text())
            if rec.get("key") != key:
                return None
            flat = load_file(tensors)
        except (OSError, ValueError):
            return None
        preview: dict = {}
        for k, v in flat.items():
            *heads, last = k.split("/")
            node = preview
            for h in heads:
                node = node.setdefault(h, {})
            node[last] = v
        return {"runs": rec["runs"], "preview": preview}

    def put(self, cid: str, key: str, result: dict) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        flat: dict[str, torch.Tensor] = {}

        def walk(prefix: str, node) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}/{k}" if prefix else k, v)
            elif node is not None:
                flat[prefix] = node.detach().clone()  # no shared storage: safetensors

        walk("", result["preview"])
        tmp = self.dir / f".{cid}.safetensors.tmp"
        save_file(flat, tmp)
        os.replace(tmp, self.dir / f"{cid}.safetensors")
        tmp = self.dir / f".{cid}.json.tmp"
        tmp.write_text(json.dumps({"key": key, "runs": result["runs"]}) + "\n")
        os.replace(tmp, self.dir / f"{cid}.json")  # last: the json marks the concept finished
