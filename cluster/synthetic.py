"""A stand-in for `run_job` that trains nothing: for benchmarks of scheduling and storage, and for
tests of the driver's fault handling where training would only cost time.

`synthetic_job` returns a result of `run_job`'s shape: the preset's LoRA tensors filled with small
values drawn from a generator seeded by the job (the same job gives the same values), a flat PSNR
curve that passes vetting, and an optional sleep standing in for training time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time

import numpy as np
import torch

from weightgen.collect.job import Job, lora_template
from weightgen.config import Preset


@functools.lru_cache(maxsize=4)
def _shapes(preset_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    preset = Preset.from_dict(json.loads(preset_json))
    return tuple((k, tuple(v.shape)) for k, v in lora_template(preset).items())


def synthetic_job(
    job: Job,
    *,
    preset: Preset,
    base_state=None,
    tokens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    device: str = "cpu",
    seconds: float = 0.0,
) -> dict:
    shapes = _shapes(json.dumps(preset.to_dict(), sort_keys=True))
    seed = int.from_bytes(hashlib.sha256(job.key.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    lora = {k: (0.01 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes}
    if seconds > 0:
        time.sleep(seconds)
    steps = preset.concept.steps
    return {
        "key": job.key,
        "concept_id": job.concept_id,
        "seed": job.seed,
        "lora": lora,
        "metrics": {
            "steps": steps,
            "psnr_step0": 20.0,
            "psnr_final": 25.0,
            "ssim_step0": 0.5,
            "ssim_final": 0.7,
            "train_seconds": seconds,
            "curve": [
                {"step": 0, "time_s": 0.0, "psnr": 20.0, "ssim": 0.5},
                {"step": steps, "time_s": seconds, "psnr": 25.0, "ssim": 0.7},
            ],
        },
    }
