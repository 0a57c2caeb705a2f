"""The benchmark's protocol (`weightgen evaluate`; its settings: weightgen.config.BenchConfig):
every initialisation of a new concept, trained on the same images, seeds and evaluation schedule,
with learning rates chosen on training concepts.

  1. step 0: base, generated (one DDIM step), nearest and mean training LoRA on every held-out concept
     (and `refined` / `blended` when asked: BenchConfig.refine_strength / blend);
  2. learning-rate sweep on training concepts only (never held-out ones): each method's rate is the
     one with the best median quality over log(step) (`metrics.log_step_quality`: early progress,
     as time to target measures, and the end) over the sweep concepts, among the rates whose runs
     never collapse (end > 3 dB under their peak); for `nearest` the concept's own LoRA is
     excluded from the pool (it would be its own nearest neighbour);
  3. fine-tunes on `per_family` held-out concepts of every family: scratch (pix2pix U-Net) until its
     PSNR plateaus, every base + LoRA method for `lora_steps` steps; one task per concept, in-process
     or as Ray tasks (`jobs/evaluate.py`);
  4. report: final quality = median of the last three measurements; target = scratch's final
     quality; time to target = training wall time (plus sampling for `generated`) at the first
     measurement at or above it.
"""

from __future__ import annotations


def select_concepts(split: str, per_family: int, skip: int = 0) -> list:
    """The first `per_family` concepts of each family after its first `skip`, families in
    catalogue order (deterministic; skip=K gives a set disjoint from per_family<=K's)."""
    from weightgen.concepts import concepts

    chosen, seen = [], {}
    for c in concepts(split):
        n = seen.get(c.family, 0)
        if skip <= n < skip + per_family:
            chosen.append(c)
        seen[c.family] = n + 1
    return chosen
