"""Every benchmark method's initial LoRA for a list of concepts, and the choices behind the tuned
ones, made on the recipe's validation split (never on held-out or novel concepts):

  knn-blend      k among BenchConfig.knn_k: the best median step-0 PSNR on validation
  blended        alpha among BenchConfig.blend: the best median step-0 PSNR on validation
  nearest-noise  noise (in units of the data set's per-element std) equal to the median RMS
                 distance, in those units, between the generated and the nearest LoRA on
                 validation: retrieval perturbed exactly as far as the generator strays from it
  random-text    the generator fed the text of a concept of another family (drawn per concept
                 from a seeded generator), the concept's own text still conditioning the GAN
  picked         the candidate of weightgen.initial.pick_candidates (generated, nearest, blends,
                 generated's update enlarged) with the lowest L1 on the concept's training pairs
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from weightgen.config import BLENDED, PICKED, REFINED, BenchConfig
from weightgen.eval.context import BenchContext


@dataclass
class Choices:
    """The tuned settings and where they came from."""

    knn_k: int
    blend: float | None
    noise: float
    source: str
    concepts: list[str]
    table: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def tuning_concepts(preset) -> tuple[list, str]:
    """The recipe's validation split, or (a recipe without one) the first training concept of
    every family, and a line saying which."""
    from weightgen.concepts import Splits
    from weightgen.eval.protocol import select_concepts

    sp = Splits.of(preset)
    if sp.validation:
        return list(sp.validation), "validation split (training concepts never collected)"
    return select_concepts("train", 1), "training concepts (the recipe has no validation split)"


def _psnr0(ctx: BenchContext, concepts: Sequence, loras: list[dict], tb) -> list[float]:
    from weightgen.eval.newconcept import eval_pairs
    from weightgen.gan import build_concept_model, evaluate, load_lora

    g = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
    out = []
    for i, (c, lora) in enumerate(zip(concepts, loras)):
        x, y = eval_pairs(c, ctx.preset)
        load_lora(g, lora)
        out.append(evaluate(g, x, y, tb.tokens[i][None], tb.mask[i][None])[0])
    return out


def rms_distance(a: dict, b: dict, std: dict) -> float:
    """RMS of (a - b) / std over every LoRA value."""
    num, n = 0.0, 0
    for k in a:
        d = (a[k] - b[k]) / std[k].clamp_min(1e-8)
        num += float((d * d).sum())
        n += d.numel()
    return (num / max(n, 1)) ** 0.5


def tune_choices(ctx: BenchContext, cfg: BenchConfig, methods: Sequence[str]) -> Choices:
    """k, alpha and the noise scale from the validation split (see the module's docstring)."""
    from weightgen.initial import blend_loras

    concepts, source = tuning_concepts(ctx.preset)
    texts = [c.text for c in concepts]
    tb = ctx.enc.encode(texts)
    near = [ctx.baselines.nearest(tb.pooled[i], exclude=c.id)[0] for i, c in enumerate(concepts)]
    table: dict = {}
    k = cfg.knn_k[0]
    if "knn-blend" in methods and len(cfg.knn_k) > 1:
        scores = {}
        for kk in cfg.knn_k:
            loras = [
                ctx.baselines.knn(tb.pooled[i], kk, exclude=c.id)[0] for i, c in enumerate(concepts)
            ]
            scores[kk] = statistics.median(_psnr0(ctx, concepts, loras, tb))
        k = max(scores, key=scores.get)
        table["knn_k"] = {str(kk): v for kk, v in scores.items()}
    need_gen = BLENDED in methods or "nearest-noise" in methods
    gen = ctx.generate(texts, cfg.sample_steps, concepts=concepts)[0] if need_gen else None
    alpha = cfg.blend[0] if cfg.blend else None
    if BLENDED in methods and len(cfg.blend) > 1:
        scores = {}
        for a in cfg.blend:
            loras = [blend_loras(g, n, a) for g, n in zip(gen, near)]
            scores[a] = statistics.median(_psnr0(ctx, concepts, loras, tb))
        alpha = max(scores, key=scores.get)
        table["blend"] = {repr(a): v for a, v in scores.items()}
    noise = 0.0
    if "nearest-noise" in methods:
        dists = [rms_distance(g, n, ctx.baselines.std_lora) for g, n in zip(gen, near)]
        noise = statistics.median(dists)
        table["noise"] = {"rms_generated_to_nearest": dists}
    return Choices(k, alpha, noise, source, [c.id for c in concepts], table)


def other_family_text(concept, seed: int) -> tuple[str, str]:
    """(text, concept id) of a concept of another family, drawn by a generator seeded with
    (seed, concept id): the same draw in every run."""
    from weightgen.concepts import concepts

    pool = [c for c in concepts() if c.family != concept.family]
    digest = hashlib.sha256(f"{seed}:{concept.id}".encode()).digest()
    other = random.Random(int.from_bytes(digest[:8], "big")).choice(pool)
    return other.text, other.id


def _noise(lora: dict, std: dict, scale: float, key: str) -> dict:
    digest = hashlib.sha256(key.encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
    return {
        k: v + scale * std[k] * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        for k, v in lora.items()
    }


def method_inits(
    ctx: BenchContext,
    concepts: Sequence,
    methods: Sequence[str],
    cfg: BenchConfig,
    choices: Choices,
) -> tuple[dict[str, list], dict[str, list[float]], dict[str, list[dict]]]:
    """({method: initial LoRA per concept (None: trained from its own init)}, {method: seconds
    per concept added to its time (sampling, retrieval, scoring)}, {method: per concept, what it
    came from}).
    Scratch and lora-zero get None; every other method of `methods` a LoRA."""
    from weightgen.eval.newconcept import train_pairs
    from weightgen.initial import blend_loras

    n = len(concepts)
    texts = [c.text for c in concepts]
    inits: dict[str, list] = {m: [None] * n for m in methods}
    offsets: dict[str, list[float]] = {m: [0.0] * n for m in methods}
    info: dict[str, list[dict]] = {m: [{} for _ in range(n)] for m in methods}
    if not n:  # e.g. best-by-loss with no concept fine-tuned (bench.finetune = false)
        return inits, offsets, info
    # retrieval is timed as sampling is: the batch's text encoding and search, per concept
    t0 = time.perf_counter()
    tb = ctx.enc.encode(texts)
    encode_s = (time.perf_counter() - t0) / n
    near, near_s = [], []
    for i, c in enumerate(concepts):
        t0 = time.perf_counter()
        near.append(ctx.baselines.nearest(tb.pooled[i], exclude=c.id))
        near_s.append(encode_s + time.perf_counter() - t0)
    gen, per_text_s = None, 0.0
    if {"generated", BLENDED, PICKED, "nearest-noise"} & set(methods) or REFINED in methods:
        gen, per_text_s = ctx.generate(texts, cfg.sample_steps, concepts=concepts)
    for i, c in enumerate(concepts):
        lora, cid, sim = near[i]
        if "nearest" in methods:
            inits["nearest"][i], offsets["nearest"][i] = lora, near_s[i]
            info["nearest"][i] = {"concept": cid, "similarity": sim}
        if "mean" in methods:
            inits["mean"][i] = ctx.baselines.mean_lora
        if "generated" in methods:
            inits["generated"][i], offsets["generated"][i] = gen[i], per_text_s
        if BLENDED in methods:
            t0 = time.perf_counter()
            inits[BLENDED][i] = blend_loras(gen[i], lora, choices.blend)
            offsets[BLENDED][i] = per_text_s + near_s[i] + time.perf_counter() - t0
        if "knn-blend" in methods:
            t0 = time.perf_counter()
            inits["knn-blend"][i], used = ctx.baselines.knn(tb.pooled[i], choices.knn_k, c.id)
            offsets["knn-blend"][i] = encode_s + time.perf_counter() - t0
            info["knn-blend"][i] = {"neighbours": used}
        if "nearest-noise" in methods:
            t0 = time.perf_counter()
            inits["nearest-noise"][i] = _noise(
                lora, ctx.baselines.std_lora, choices.noise, f"{cfg.seed}:{c.id}"
            )
            offsets["nearest-noise"][i] = near_s[i] + time.perf_counter() - t0
            info["nearest-noise"][i] = {"concept": cid, "noise": choices.noise}
    if REFINED in methods:
        refined, s = ctx.generate(
            texts, cfg.sample_steps, [x[0] for x in near], cfg.refine_strength, concepts
        )
        inits[REFINED], offsets[REFINED] = refined, [s] * n
    if "random-text" in methods:
        drawn = [other_family_text(c, cfg.seed) for c in concepts]
        # another concept's text, and (for a generator that reads pairs) that concept's pairs
        from weightgen.concepts import get_concept

        others = [get_concept(cid) for _, cid in drawn]
        rand, s = ctx.generate([t for t, _ in drawn], cfg.sample_steps, concepts=others)
        inits["random-text"], offsets["random-text"] = rand, [s] * n
        info["random-text"] = [{"text": t, "concept": cid} for t, cid in drawn]
    g = None  # the base + LoRA model the pair-scored methods share
    if PICKED in methods or "best-by-loss" in methods:
        from weightgen.gan import build_concept_model

        g = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
    if PICKED in methods:
        chosen = pick_starts(ctx, concepts, gen, [x[0] for x in near], tb, cfg.best_pairs, g)
        for i, (lora, pick_info, s) in enumerate(chosen):
            inits[PICKED][i], offsets[PICKED][i] = lora, per_text_s + near_s[i] + s
            info[PICKED][i] = {**pick_info, "nearest": near[i][1]}
    if "best-by-loss" in methods:
        for i, c in enumerate(concepts):
            x, y = (v[: cfg.best_pairs] for v in train_pairs(c, ctx.preset))
            t0 = time.perf_counter()  # the scoring; the pairs are every method's data
            lora, cid, loss = ctx.baselines.best_by_loss(
                g, x, y, tb.tokens[i][None], tb.mask[i][None], exclude=c.id
            )
            inits["best-by-loss"][i], offsets["best-by-loss"][i] = lora, time.perf_counter() - t0
            info["best-by-loss"][i] = {"concept": cid, "l1": loss}
    return inits, offsets, info


def pick_starts(ctx, concepts, gen, near, tb, n_pairs: int, model=None) -> list[tuple]:
    """Per concept (the `picked` start: weightgen.initial.pick_candidates of its generated and
    nearest LoRA with the lowest L1 on its first `n_pairs` training pairs, {"picked": name, "l1":
    {candidate: loss}}, seconds making and scoring the candidates; making the pairs, every method's
    data, is not timed). `tb`: the concepts' TextBatch; `model`: a base + LoRA model to score with
    (built when None)."""
    from weightgen.eval.newconcept import train_pairs
    from weightgen.gan import build_concept_model
    from weightgen.initial import PairScorer, pick_by_pairs, pick_candidates

    if model is None:
        model = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state)
    out = []
    for i, c in enumerate(concepts):
        x, y = (v[:n_pairs] for v in train_pairs(c, ctx.preset))
        t0 = time.perf_counter()
        score = PairScorer(model, x, y, tb.tokens[i][None], tb.mask[i][None])
        name, lora, losses = pick_by_pairs(pick_candidates(gen[i], near[i]), score)
        out.append((lora, {"picked": name, "l1": losses}, time.perf_counter() - t0))
    return out
