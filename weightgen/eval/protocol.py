"""The benchmark's protocol (`weightgen evaluate`; its settings: weightgen.config.BenchConfig):
every initialisation of a new concept, trained on the same images, seeds and evaluation schedule,
with learning rates chosen on training concepts.

  0. the tuned choices (knn-blend's k, blended's weight, nearest-noise's scale) on the recipe's
     validation split (weightgen.eval.inits);
  1. step 0: base and every method's initial LoRA on every concept of the evaluated split
     (`heldout`: seen families, or `novel`: families no training-side stage saw);
  2. learning-rate sweep on the validation split only (never held-out or novel): each method's rate is the
     one with the best median quality over log(step) (`metrics.log_step_quality`: early progress,
     as time to target measures, and the end) over the sweep concepts, among the rates whose runs
     never collapse (end > 3 dB under their peak); for `nearest` the concept's own LoRA is
     excluded from the pool (it would be its own nearest neighbour);
  3. fine-tunes on `per_family` concepts of every family of the split: scratch (pix2pix U-Net)
     until its PSNR plateaus, lora-zero until its plateau (within `hard_max_steps`), every other
     base + LoRA method for `lora_steps` steps; one task per concept, in-process or as Ray tasks,
     each concept saved as it finishes (a rerun resumes);
  4. report: final quality = median of the last three measurements; two targets: scratch's final
     quality (the paper's) and lora-zero's (the hard one); time to target = training wall time
     (plus sampling or scoring for the methods that need it) at the first measurement at or
     above it; quartiles, never-reached counts, bootstrap intervals and sign tests
     (weightgen.eval.compare).
"""

from __future__ import annotations


def select_concepts(split, per_family: int, skip: int = 0) -> list:
    """The first `per_family` concepts of each family after its first `skip`, families in
    catalogue order (deterministic; skip=K gives a set disjoint from per_family<=K's). `split`:
    a catalogue split name or a list of concepts (a recipe's split: concepts.Splits)."""
    from weightgen.concepts import concepts

    chosen, seen = [], {}
    for c in concepts(split) if isinstance(split, str) else split:
        n = seen.get(c.family, 0)
        if skip <= n < skip + per_family:
            chosen.append(c)
        seen[c.family] = n + 1
    return chosen
