"""The held-out benchmark (`weightgen evaluate`): every initialisation of a new concept, trained on
the same images, seeds and evaluation schedule, with learning rates chosen on training concepts.

Protocol (issue 4; DESIGN.md report contract):
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

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from weightgen.config import Preset
from weightgen.errors import ConfigError, WeightgenError
from weightgen.eval.metrics import COLLAPSE_DB

TRAINED = ("scratch", "lora-zero", "generated", "nearest", "mean")
# opt-in (BenchConfig.refine_strength): the nearest training LoRA refined by one denoising step of
# the generator from noise level `refine_strength` (SDEdit), so retrieval and generation combine
REFINED = "refined"
# opt-in (BenchConfig.blend): blend * generated + (1 - blend) * nearest (newconcept.blend_loras), the
# generator's guess kept at a trained LoRA's scale
BLENDED = "blended"


@dataclass
class BenchConfig:
    per_family: int = 2  # held-out concepts fine-tuned per family (13 families -> 26 concepts)
    skip_per_family: int = 0  # fine-tune the ones after each family's first K (a disjoint set)
    lora_steps: int = 300  # budget of every base + LoRA method
    scratch_max_steps: int = 2000  # scratch trains until its plateau, at most this many steps
    patience_steps: int = 300  # plateau: no gain of min_gain_db within this many steps
    min_gain_db: float = 0.2
    lora_plateau: bool = False  # base + LoRA methods also stop at their plateau (lora_steps: cap)
    eval_every: int = 25  # after the dense early measurements (metrics.EARLY_STEPS, 1 ... 50)
    sweep_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    sweep_concepts: int = 4  # training concepts, one from each of k evenly spread families
    sweep_steps: int = 300
    lrs: dict[str, float] = field(default_factory=dict)  # fixed rates: no sweep for these methods
    sample_steps: int = 1  # DDIM steps for `generated` (and `refined`)
    refine_strength: float | None = None  # in (0, 1]: adds the `refined` method
    blend: float | None = None  # in (0, 1): adds `blended`, this weight on generated, rest nearest
    empty_text: bool = False  # ablation: the generator sees the empty text
    workers: int = 1  # > 1 (or RAY_ADDRESS set): one Ray task per concept
    seed: int = 0
    finetune: bool = True  # False: step-0 table (and ablations) only
    concepts: int | None = None  # at most this many fine-tuned held-out concepts (None: all chosen)
    step0_concepts: int | None = None  # at most this many held-out concepts at step 0 (None: all)
    fid_weights: str | None = None  # local Inception weights (torch-fidelity format): adds FID

    def __post_init__(self):
        for name in (
            "per_family",
            "lora_steps",
            "scratch_max_steps",
            "eval_every",
            "sample_steps",
            "patience_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sweep_concepts < 0 or self.workers < 1 or self.skip_per_family < 0:
            raise ConfigError("sweep_concepts and skip_per_family must be >= 0, workers >= 1")
        if self.refine_strength is not None and not 0.0 < self.refine_strength <= 1.0:
            raise ConfigError(f"refine_strength must be in (0, 1], got {self.refine_strength}")
        if self.blend is not None and not 0.0 < self.blend < 1.0:
            raise ConfigError(
                f"blend must be in (0, 1) (0: nearest, 1: generated), got {self.blend}"
            )
        bad = set(self.lrs) - set(self.methods)
        if bad:
            raise ConfigError(
                f"unknown method(s) in lrs: {sorted(bad)}; choose from {self.methods}"
            )
        if any(v <= 0 for v in [*self.sweep_lrs, *self.lrs.values()]):
            raise ConfigError("learning rates must be > 0")
        self.sweep_lrs = tuple(float(v) for v in self.sweep_lrs)

    @property
    def methods(self) -> tuple[str, ...]:
        """The trained methods, in report order."""
        return (
            TRAINED
            + ((REFINED,) if self.refine_strength is not None else ())
            + ((BLENDED,) if self.blend is not None else ())
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# --------------------------------------------------------------------------------------------
# One concept, every method (pure: runs in-process or inside a Ray task)
# --------------------------------------------------------------------------------------------


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
        steps = cfg.scratch_max_steps if scratch else cfg.lora_steps
        plateau = None
        if scratch or cfg.lora_plateau:

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


def run_tasks(fn: Callable[..., dict], jobs: list[dict], *, workers: int, desc: str) -> list:
    """fn(**job) for every job: in this process, or one Ray task per job (workers > 1 or a cluster
    named by RAY_ADDRESS). Large shared values (the base) are put in the object store once."""
    if workers <= 1 and not os.environ.get("RAY_ADDRESS"):
        return [fn(**job) for job in tqdm(jobs, desc=desc, unit="concept")]
    import ray

    from cluster.collect import init_ray

    started = not ray.is_initialized()
    init_ray(os.environ.get("RAY_ADDRESS"), workers)  # the cluster when named, else a local Ray
    try:
        shared = {}
        for k in ("base_state", "preset", "cfg"):
            if jobs and k in jobs[0] and all(j[k] is jobs[0][k] for j in jobs):
                shared[k] = ray.put(jobs[0][k])
        remote = ray.remote(num_cpus=1, max_retries=2)(_ray_call)
        keys, values = list(shared), list(shared.values())
        # object refs as top-level arguments: Ray resolves those (not refs nested in a dict)
        refs = [
            remote.remote(fn, {k: v for k, v in j.items() if k not in shared}, keys, *values)
            for j in jobs
        ]
        results = [None] * len(refs)
        index = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, unit="concept") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results[index[done[0]]] = ray.get(done[0])
                bar.update(1)
        return results
    finally:
        if started:
            ray.shutdown()


def _ray_call(fn, job: dict, keys: list[str], *values):
    return fn(**dict(zip(keys, values)), **job)


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------


class _Context:
    """Everything loaded once: base, generator, encoder, training-set baselines."""

    def __init__(self, run: Path, generator: Path | None = None, empty_text: bool = False):
        from weightgen.diffusion import load_generator
        from weightgen.eval.newconcept import WeightBaselines
        from weightgen.gan import load_base
        from weightgen.text import get_encoder

        self.run = run
        self.base_state, self.preset = load_base(run / "base")
        self.bundle = load_generator(generator or run / "generator")
        self.enc = get_encoder(self.preset.text_model, self.preset.gan.max_text_tokens)
        self.baselines = WeightBaselines.from_dataset(str(run / "dataset"))
        self.empty_text = empty_text

    def with_generator(self, generator: Path, empty_text: bool | None = None) -> _Context:
        """The same base, encoder and baselines with another generator (ablations)."""
        from weightgen.diffusion import load_generator

        other = object.__new__(_Context)
        other.__dict__.update(self.__dict__)
        other.bundle = load_generator(generator)
        if empty_text is not None:
            other.empty_text = empty_text
        return other

    def generate(
        self, texts: list[str], steps: int, init: list[dict] | None = None, strength: float = 1.0
    ) -> tuple[list[dict], float]:
        """LoRAs for `texts` and the seconds per concept (text encoding included, batched);
        with `init`, those LoRAs refined from noise level `strength` (`sample_blocks`)."""
        from weightgen.eval.newconcept import timed_generate

        # empty text: the generator's learned null condition (trained by text dropout), i.e.
        # classifier-free guidance 0 -- the text encoder itself refuses an empty string
        kw = {"guidance": 0.0} if self.empty_text else {}
        if init is not None:
            kw.update(init=init, strength=strength)
        loras, seconds = timed_generate(self.bundle, texts, encoder=self.enc, steps=steps, **kw)
        return loras, seconds / len(texts)


def find_nearest(ctx: _Context, held: Sequence, tb) -> dict[str, dict]:
    """{concept: {"lora", "concept", "similarity"}}: the training LoRA closest in text."""
    out = {}
    for i, c in enumerate(held):
        nl, nid, sim = ctx.baselines.nearest(tb.pooled[i])
        out[c.id] = {"lora": nl, "concept": nid, "similarity": sim}
    return out


def step0_table(
    ctx: _Context,
    held: Sequence,
    gen: list[dict],
    tb,
    nearest: dict[str, dict],
    extra: dict[str, list[dict]] | None = None,
) -> dict:
    """{concept: {method: {"psnr", "ssim"}}} at step 0. One base + LoRA model per concept, the
    LoRA swapped in place. `tb`: the held-out texts' TextBatch; `nearest`: `find_nearest`'s
    answer for them; `extra`: more {method: one LoRA per held-out concept} rows."""
    from weightgen.eval.newconcept import eval_pairs
    from weightgen.gan import build_concept_model, evaluate, load_lora

    g = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
    zero_b = _a_init(g)  # shared-seed A, B = 0: the base's own output
    step0 = {}
    for i, c in enumerate(tqdm(held, desc="step 0", unit="concept")):
        x, y = eval_pairs(c, ctx.preset)
        row = {}
        for name, lora in (
            ("base", zero_b),
            ("generated", gen[i]),
            ("nearest", nearest[c.id]["lora"]),
            ("mean", ctx.baselines.mean_lora),
            *((k, v[i]) for k, v in (extra or {}).items()),
        ):
            load_lora(g, lora)
            p, s = evaluate(g, x, y, tb.tokens[i][None], tb.mask[i][None])
            row[name] = {"psnr": p, "ssim": s}
        row["lora-zero"] = dict(row["base"])  # B = 0: exactly the base's output
        step0[c.id] = row
    return step0


def _a_init(g) -> dict[str, torch.Tensor]:
    from weightgen.gan.lora import lora_state_dict

    return {k: v.clone() for k, v in lora_state_dict(g).items()}


SWEEP_CRITERION = (
    "median log-step quality; "
    f"rates with a collapsed run (end > {COLLAPSE_DB:g} dB under peak) last"
)


def choose_rate(cells: dict[str, dict]) -> float:
    """The rate (keys: repr of a float) with the best median log-step quality among those with no
    collapsed run; if every rate collapsed somewhere, the best score among all of them."""
    stable = {k: v for k, v in cells.items() if not v["collapsed"]} or cells
    return float(max(stable, key=lambda k: stable[k]["score"]))


def sweep_keys(ctx: _Context, cfg: BenchConfig, methods: Sequence[str]) -> dict[str, dict]:
    """What each method's sweep result depends on; a cached row is reused only under its own key,
    so a retrained generator re-sweeps `generated` alone, not the baselines."""
    common = {
        "run": str(Path(ctx.run).resolve()),
        "sweep_lrs": list(cfg.sweep_lrs),
        "sweep_concepts": cfg.sweep_concepts,
        "sweep_steps": cfg.sweep_steps,
        "eval_every": cfg.eval_every,
        "seed": cfg.seed,
        "criterion": SWEEP_CRITERION,
    }
    gen = {
        # the generator's identity: a retrained one is swept again
        "generator": [
            ctx.bundle.meta.get("layout_hash"),
            (ctx.bundle.meta.get("summary") or {}).get("steps"),
            (ctx.bundle.meta.get("summary") or {}).get("final_loss"),
        ],
        "sample_steps": cfg.sample_steps,
        "empty_text": cfg.empty_text,
    }
    refine = {**gen, "refine_strength": cfg.refine_strength}
    own = {"generated": gen, REFINED: refine, BLENDED: {**gen, "blend": cfg.blend}}
    return {m: {**common, **own.get(m, {})} for m in methods}


def sweep_learning_rates(ctx: _Context, cfg: BenchConfig, out: Path) -> dict:
    """Best rate per method on training concepts. Cached in out/sweep.json per method: a method
    whose settings (`sweep_keys`) are unchanged keeps its row and is not trained again."""
    from weightgen.eval.metrics import collapsed, log_step_quality, median, plateau_quality
    from weightgen.eval.newconcept import blend_loras

    methods = [m for m in cfg.methods if m not in cfg.lrs]
    keys = sweep_keys(ctx, cfg, methods)
    if not methods or cfg.sweep_concepts == 0:
        return {"keys": keys, "best": {}, "table": {}}
    path = out / "sweep.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    table: dict[str, dict[str, Any]] = {
        m: cached["table"][m]
        for m in methods
        if (cached.get("keys") or {}).get(m) == keys[m] and m in (cached.get("table") or {})
    }
    todo = [m for m in methods if m not in table]
    if not todo:
        best = {m: choose_rate(table[m]) for m in methods}
        return {"keys": keys, "concepts": cached["concepts"], "best": best, "table": table}
    # one training concept from each of k families spread evenly over the catalogue's order
    # (never a held-out one), so the rates are not tuned on the colour families alone
    first = select_concepts("train", 1)
    k = min(cfg.sweep_concepts, len(first))
    picks = [first[(i * len(first)) // k] for i in range(k)]
    texts = [c.text for c in picks]
    need_gen = "generated" in todo or BLENDED in todo
    gen = ctx.generate(texts, cfg.sample_steps)[0] if need_gen else [None] * k
    tb = ctx.enc.encode(texts)
    near = [ctx.baselines.nearest(tb.pooled[i], exclude=c.id)[0] for i, c in enumerate(picks)]
    refined = [None] * k
    if REFINED in todo:
        refined = ctx.generate(texts, cfg.sample_steps, near, cfg.refine_strength)[0]
    jobs = []
    for i, c in enumerate(picks):
        inits = {
            "scratch": None,
            "lora-zero": None,
            "generated": gen[i],
            "nearest": near[i],
            "mean": ctx.baselines.mean_lora,
            REFINED: refined[i],
            BLENDED: blend_loras(gen[i], near[i], cfg.blend) if BLENDED in todo else None,
        }
        for lr in cfg.sweep_lrs:
            jobs.append(
                dict(
                    preset=ctx.preset,
                    base_state=ctx.base_state,
                    concept_id=c.id,
                    tokens=tb.tokens[i],
                    mask=tb.mask[i],
                    inits={m: inits[m] for m in todo},
                    lrs={m: lr for m in todo},
                    # the LoRA methods run every sweep step (no plateau stop), so a collapse
                    # late in the budget is seen
                    cfg=dataclasses.replace(
                        cfg,
                        lora_steps=cfg.sweep_steps,
                        scratch_max_steps=cfg.sweep_steps,
                        lora_plateau=False,
                    ),
                    preview=0,
                )
            )
    results = run_tasks(concept_runs, jobs, workers=cfg.workers, desc="lr sweep")
    for m in todo:
        table[m] = {}
        for lr in cfg.sweep_lrs:
            curves = [
                res["runs"][m]["curve"] for res, job in zip(results, jobs) if job["lrs"][m] == lr
            ]
            table[m][repr(lr)] = {
                "score": median(log_step_quality(c) for c in curves),
                "final": median(plateau_quality(c) for c in curves),
                "collapsed": sum(collapsed(c) for c in curves),
            }
    table = {m: table[m] for m in methods}  # report order
    best = {m: choose_rate(table[m]) for m in methods}
    out.mkdir(parents=True, exist_ok=True)
    result = {"keys": keys, "concepts": [c.id for c in picks], "best": best, "table": table}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def logged_train_seconds(gen_dir: Path, steps: int, batch: int) -> float | None:
    """Seconds the generator's training steps took, summed over its train_log.jsonl (every
    resumed segment included: each row logs the samples per second since the previous row;
    `batch` samples per step, fixed over resumes). None when the log does not cover steps
    1..`steps` (missing, trimmed or started elsewhere)."""
    path = Path(gen_dir) / "train_log.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    total, prev = 0.0, 0
    for r in rows:
        sps = r.get("samples_per_s")
        if not sps or r["step"] <= prev:
            return None
        total += (r["step"] - prev) * batch / sps
        prev = r["step"]
    return total if rows and prev == steps else None


def one_off_cost(
    run: Path, bundle_meta: dict, gen_dir: Path | None = None, _chain: tuple[Path, ...] = ()
) -> dict:
    """Seconds spent once: base pre-training + collection (sum of per-concept training times of the
    accepted concepts, so cluster width does not flatter it) + the sensitivity measurement when the
    generator's loss used it + generator training (from `gen_dir`'s train_log.jsonl when it
    covers every step, resumed segments included; else the export's summary, a resumed run's
    seconds scaled to all its steps)."""
    from weightgen.data import iter_samples

    base = json.loads((run / "base" / "metrics.json").read_text()).get("seconds")
    collect = 0.0
    n = 0
    for s in iter_samples(str(run / "dataset")):
        collect += float(s.meta.get("metrics", {}).get("train_seconds", 0.0))
        n += 1
    summ = bundle_meta.get("summary") or {}
    batch = (bundle_meta.get("train_config") or {}).get("batch_size")
    gen = None
    if gen_dir is not None and batch:
        gen = logged_train_seconds(gen_dir, summ.get("steps", -1), batch)
    source = "train_log" if gen is not None else "summary"
    if gen is None:
        gen = summ.get("seconds")
        if gen is not None and summ.get("resumed_from"):  # a resumed run timed its own steps only
            done = summ.get("steps", 0) - summ["resumed_from"]
            gen = gen * summ["steps"] / done if done > 0 else None
            source = "summary, scaled from the resumed steps"
    sens = None
    if (bundle_meta.get("train_config") or {}).get("loss_weight") == "sensitivity":
        from weightgen.data.sensitivity import sensitivity_seconds

        sens = sensitivity_seconds(str(run / "dataset"))
    # a warm-started generator (train --init) also cost everything its initialisation cost
    init, init_cost = (bundle_meta.get("train_config") or {}).get("init_from"), None
    if init:
        init_cost = _init_generator_cost(Path(init), _chain + ((gen_dir or run).resolve(),))
    init_s = None if init_cost is None else init_cost["total_s"]
    total = sum(v for v in (base, collect, sens, gen, init_s) if v is not None)
    return {
        "base_s": base,
        "collection_s": collect,
        "collection_concepts": n,
        "sensitivity_s": sens,
        "generator_s": gen,
        "generator_s_from": source,
        "init_generator": init,
        "init_generator_s": init_s,
        "init_generator_cost": init_cost,
        "total_s": total,
    }


def _init_generator_cost(gen_dir: Path, chain: tuple[Path, ...]) -> dict:
    """The one-off cost of the generator a run was warm-started from: its own run's base,
    collection, sensitivity and training (and its own initialisation, recursively). The run is
    the local folder holding the data set it was trained on (RUN/dataset next to RUN/base).
    `chain`: the generators already counted (a warm start from itself is an error, not a loop)."""
    if gen_dir.resolve() in chain:
        raise WeightgenError(
            f"the warm-start chain returns to {gen_dir} (a generator started from its own "
            "folder): the cost of what it overwrote cannot be counted"
        )
    meta_path = gen_dir / "generator.json"
    if not meta_path.is_file():
        raise WeightgenError(
            f"the generator was warm-started from {gen_dir}, which is gone: its one-off cost "
            "cannot be counted (restore it or evaluate another generator)"
        )
    meta = json.loads(meta_path.read_text())
    run = Path(str(meta.get("dataset", "")).removeprefix("file://")).parent
    if not (run / "base" / "metrics.json").is_file():
        raise WeightgenError(
            f"the generator {gen_dir} was trained on {meta.get('dataset')!r}, not a local run "
            "folder with base/: its one-off cost cannot be counted"
        )
    return one_off_cost(run, meta, gen_dir, chain)


def run_benchmark(
    run: str | Path,
    out: str | Path,
    cfg: BenchConfig | None = None,
    *,
    generator: str | Path | None = None,
    ablations: Sequence[str] = (),
    title: str = "weightgen held-out benchmark (tiny preset)",
) -> dict:
    from weightgen.concepts import concepts as list_concepts
    from weightgen.eval.newconcept import blend_loras
    from weightgen.eval.report import save_image_grid, summarise, write_report

    cfg = cfg or BenchConfig()
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    ctx = _Context(run, Path(generator) if generator else None, cfg.empty_text)
    preset = ctx.preset
    held = list_concepts("heldout")[: cfg.step0_concepts]

    # 1. step 0 on every held-out concept
    gen, per_text_s = ctx.generate([c.text for c in held], cfg.sample_steps)
    t0 = time.perf_counter()
    ctx.generate([held[0].text + " "], cfg.sample_steps)  # one uncached concept alone
    one_s = time.perf_counter() - t0
    tb = ctx.enc.encode([c.text for c in held])
    nearest_of = find_nearest(ctx, held, tb)
    extra_step0, offsets = {}, {"generated": per_text_s}
    if cfg.refine_strength is not None:
        init = [nearest_of[c.id]["lora"] for c in held]
        refined, offsets[REFINED] = ctx.generate(
            [c.text for c in held], cfg.sample_steps, init, cfg.refine_strength
        )
        extra_step0[REFINED] = refined
    if cfg.blend is not None:
        # retrieval is a dot product over the training texts: the blend costs what sampling does
        extra_step0[BLENDED] = [
            blend_loras(gen[i], nearest_of[c.id]["lora"], cfg.blend) for i, c in enumerate(held)
        ]
        offsets[BLENDED] = per_text_s
    step0 = step0_table(ctx, held, gen, tb, nearest_of, extra_step0)

    # 2. learning rates from training concepts
    if cfg.finetune:
        sweep = sweep_learning_rates(ctx, cfg, out)
    else:
        sweep = {"best": {}, "table": {}}
    methods = cfg.methods
    lrs = {m: cfg.lrs.get(m, sweep["best"].get(m, preset.concept.lr)) for m in methods}

    # 3. fine-tunes
    chosen = select_concepts("heldout", cfg.per_family, cfg.skip_per_family) if cfg.finetune else []
    chosen = [c for c in chosen if c in held][: cfg.concepts]
    jobs = []
    for c in chosen:
        i = held.index(c)
        jobs.append(
            dict(
                preset=preset,
                base_state=ctx.base_state,
                concept_id=c.id,
                tokens=tb.tokens[i],
                mask=tb.mask[i],
                inits={
                    "scratch": None,
                    "lora-zero": None,
                    "generated": gen[i],
                    "nearest": nearest_of[c.id]["lora"],
                    "mean": ctx.baselines.mean_lora,
                    **{m: v[i] for m, v in extra_step0.items()},
                },
                lrs=lrs,
                cfg=cfg,
                offsets=offsets,
            )
        )
    results = run_tasks(concept_runs, jobs, workers=cfg.workers, desc="fine-tune") if jobs else []
    runs = {c.id: res["runs"] for c, res in zip(chosen, results)}

    # 4. report
    summary = summarise(step0, runs)
    if cfg.fid_weights and results:
        from weightgen.eval.fid import pooled_fid

        fids = pooled_fid(cfg.fid_weights, [r["preview"]["all"] for r in results], methods)
        for m_, v in fids.items():
            summary["methods"][m_]["fid_final"] = v
    columns = ["input", "target"] + [f"{m} {w}" for m in methods for w in ("0", "end")]
    rows = []
    for c, res in zip(chosen, results):
        p = res["preview"]
        imgs = [p["input"][0], p["target"][0]]
        for m in methods:
            imgs += [p[m]["start"][0], p[m]["end"][0]]
        rows.append((c.id, imgs))
    if rows:
        # one grid per concept (grids/ID.png) and the first six together in the report
        for row in rows:
            save_image_grid(out / "grids" / f"{row[0]}.png", [row], columns)
        save_image_grid(out / "grid.png", rows[:6], columns)

    # 5. ablation rows (step-0 quality of each generator variant on every held-out concept)
    ablation_rows = {}
    if ablations:
        from weightgen.eval.ablations import (
            SAMPLING,
            ablation_generator,
            blend_weight,
            refine_strength,
            step0_row,
        )

        ablation_rows["reference"] = step0_row(ctx, held, sample_steps=cfg.sample_steps)
        for name in ablations:
            if refine_strength(name) is not None:
                row = step0_row(
                    ctx, held, sample_steps=cfg.sample_steps, refine=refine_strength(name)
                )
            elif blend_weight(name) is not None:
                row = step0_row(ctx, held, sample_steps=cfg.sample_steps, blend=blend_weight(name))
            elif name in SAMPLING:
                spec = SAMPLING[name]
                actx = ctx.with_generator(
                    Path(generator) if generator else run / "generator",
                    empty_text=spec.get("empty_text", cfg.empty_text),
                )
                row = step0_row(actx, held, sample_steps=spec.get("sample_steps", cfg.sample_steps))
            else:
                gdir = ablation_generator(run, out, name, ctx.bundle.meta)
                row = step0_row(ctx.with_generator(gdir), held, sample_steps=cfg.sample_steps)
            ablation_rows[name] = row

    m = summary["methods"]

    def win_rate(a: str, refs: Sequence[str]) -> dict[str, float]:
        n = len(step0)
        return {k: sum(step0[c][a]["psnr"] > step0[c][k]["psnr"] for c in step0) / n for k in refs}

    wins = win_rate("generated", ("base", "lora-zero", "mean", "nearest"))
    # the opt-in methods (refined, blended): their step-0 wins and how the headline names them
    extra_wins = {k: win_rate(k, ("generated", "mean", "nearest")) for k in extra_step0}

    def extra_label(k: str) -> str:
        if k == REFINED:
            return f"refined (nearest LoRA, one step from strength {cfg.refine_strength:g})"
        return f"blended ({cfg.blend:g} generated + {1 - cfg.blend:g} nearest)"

    def shares(w: dict[str, float]) -> str:
        return ", ".join(f"{k} {100 * v:.0f}%" for k, v in w.items())

    cost = one_off_cost(run, ctx.bundle.meta, Path(generator) if generator else run / "generator")
    saved = payback(m, cost)
    extra = {
        "config": cfg.to_dict(),
        "learning_rates": lrs,
        "sweep": sweep,
        "one_off_cost": cost,
        "payback": saved,
        "text_to_lora_s": {"one": one_s, "per_concept_in_batch": per_text_s, "batch": len(held)},
        "generated_step0_win_rate": wins,
        **{f"{k}_step0_win_rate": w for k, w in extra_wins.items()},
        "nearest": {
            k: {kk: v[kk] for kk in ("concept", "similarity")} for k, v in nearest_of.items()
        },
        "generator": ctx.bundle.meta,
        "ablations": ablation_rows,
        "runs": runs,
        "headline": {
            "held-out concepts": f"{len(held)} at step 0, {len(chosen)} fine-tuned "
            f"({cfg.per_family} per family"
            + (f" after the first {cfg.skip_per_family}" if cfg.skip_per_family else "")
            + ")",
            "generated PSNR at step 0 (median)": f"{m['generated']['psnr_step0']:.2f} dB vs base "
            f"{m['base']['psnr_step0']:.2f}, mean {m['mean']['psnr_step0']:.2f}, nearest "
            f"{m['nearest']['psnr_step0']:.2f}",
            "generated beats at step 0 (share of concepts)": shares(wins),
            **{
                f"{extra_label(k)} at step 0": f"median {m[k]['psnr_step0']:.2f} dB; beats "
                + shares(w)
                for k, w in extra_wins.items()
            },
            "learning rates (sweep on training concepts)": ", ".join(
                f"{k} {v:g}" for k, v in lrs.items()
            ),
            "one-off cost": _cost_line(cost),
            "paid back after (new concepts)": _payback_line(saved),
            **(
                {
                    "FID at the end (pooled evaluation images, torchmetrics)": ", ".join(
                        f"{k} {v['fid_final']:.2f}" for k, v in m.items() if "fid_final" in v
                    )
                }
                if cfg.fid_weights and results
                else {}
            ),
            "text -> LoRA": f"{one_s:.3f} s for one concept, {per_text_s:.4f} s per concept in a "
            f"batch of {len(held)}",
        },
    }
    write_report(out, summary, runs=runs, extra=extra, title=title)
    _append_sections(out / "report.md", extra)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return {"summary": summary, **extra}


def _cost_line(cost: dict) -> str:
    return (
        f"{cost['total_s']:.0f} s (base {cost['base_s'] or 0:.0f}, collection "
        f"{cost['collection_s']:.0f} over {cost['collection_concepts']} concepts, "
        + (f"sensitivity {cost['sensitivity_s']:.0f}, " if cost.get("sensitivity_s") else "")
        + f"generator {cost['generator_s'] or 0:.0f}"
        + (
            f", warm start from {cost['init_generator']}: {cost['init_generator_s']:.0f})"
            if cost.get("init_generator")
            else ")"
        )
    )


def payback(methods: dict, cost: dict) -> dict:
    """Median seconds saved per new concept against scratch and lora-zero, and after how many
    new concepts the one-off cost is paid back (None: no time saved)."""
    saved = {}
    for ref in ("scratch", "lora-zero"):
        a = methods.get(ref, {}).get("time_to_target_s")
        b = methods.get("generated", {}).get("time_to_target_s")
        per = None if a is None or b is None else a - b
        saved[ref] = {
            "seconds_saved_per_concept": per,
            "payback_concepts": None if not per or per <= 0 else cost["total_s"] / per,
        }
    return saved


def _payback(n: float | None) -> str:
    return "never (no time saved)" if n is None else f"{n:.0f}"


def _payback_line(saved: dict) -> str:
    return ", ".join(f"vs {k} {_payback(v['payback_concepts'])}" for k, v in saved.items())


def render_report(
    out: str | Path,
    title: str = "weightgen held-out benchmark (tiny preset)",
    *,
    run: str | Path | None = None,
    generator: str | Path | None = None,
):
    """Rewrite OUT's report.md, report.json and plots from its report.json (no training): for a
    report written before a change to how it is summarised. With `run` and `generator`, the
    one-off cost is measured again from them."""
    from weightgen.eval.report import summarise, write_report

    out = Path(out)
    try:
        old = json.loads((out / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise WeightgenError(f"no readable report.json in {out}: {e}") from None
    runs, step0 = old["runs"], old["step0"]
    summary = summarise(step0, runs)
    for m_, v in old.get("methods", {}).items():  # FID is not recomputed
        if "fid_final" in v and m_ in summary["methods"]:
            summary["methods"][m_]["fid_final"] = v["fid_final"]
    extra = {k: v for k, v in old.items() if k not in summary}  # the rest came from the run
    if run is not None and generator is not None:
        from weightgen.diffusion.sampler import GENERATOR_JSON

        meta = json.loads((Path(generator) / GENERATOR_JSON).read_text())
        extra["one_off_cost"] = one_off_cost(Path(run), meta, Path(generator))
        extra["headline"]["one-off cost"] = _cost_line(extra["one_off_cost"])
    extra["payback"] = payback(summary["methods"], extra["one_off_cost"])
    extra["headline"]["paid back after (new concepts)"] = _payback_line(extra["payback"])
    write_report(out, summary, runs=runs, extra=extra, title=title)
    _append_sections(out / "report.md", extra)
    return {"summary": summary, **extra}


def _sweep_cell(c: dict | float | None) -> str:
    if c is None:
        return "—"
    if not isinstance(c, dict):  # a sweep.json written before the log-step score: final PSNR only
        return f"{c:.2f}"
    crash = f", {c['collapsed']} collapsed" if c["collapsed"] else ""
    return f"{c['score']:.2f} / {c['final']:.2f}{crash}"


def _append_sections(md: Path, extra: dict) -> None:
    """Sweep, one-off cost and ablation tables after the main report."""
    lines = ["", "## Learning rates (sweep on training concepts, never held-out ones)", ""]
    table = extra["sweep"].get("table") or {}
    if table:
        rates = sorted({float(r) for v in table.values() for r in v})
        over = ", ".join(extra["sweep"].get("concepts", []))
        scored = any(isinstance(c, dict) for v in table.values() for c in v.values())
        lines += [
            (
                f"Over {over}, per rate: median PSNR over log(step) (the score) / median final "
                f"PSNR (dB), and runs that collapsed (ended > {COLLAPSE_DB:g} dB under their "
                "peak). The chosen rate has the best score among rates with no collapse."
                if scored  # a report from before the log-step score: final PSNR only
                else f"Median final PSNR (dB) over {over}:"
            ),
            "",
            "| method | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen |",
            "|---" * (len(rates) + 2) + "|",
        ]
        for m, v in table.items():
            cells = [_sweep_cell(v.get(repr(r))) for r in rates]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {extra['learning_rates'][m]:g} |")
    else:
        lines.append(
            "Rates: " + ", ".join(f"{k} {v:g}" for k, v in extra["learning_rates"].items())
        )
    cost, pay = extra["one_off_cost"], extra["payback"]
    lines += [
        "",
        "## One-off cost and payback",
        "",
        f"- base pre-training {cost['base_s'] or 0:.0f} s, collection {cost['collection_s']:.0f} s "
        f"(sum of {cost['collection_concepts']} concept trainings), "
        + (f"sensitivity {cost['sensitivity_s']:.0f} s, " if cost.get("sensitivity_s") else "")
        + "generator "
        f"{cost['generator_s'] or 0:.0f} s"
        + (
            f", the generator it was warm-started from ({cost['init_generator']}: its own base, "
            f"collection, sensitivity and training) {cost['init_generator_s']:.0f} s"
            if cost.get("init_generator")
            else ""
        )
        + f": **{cost['total_s']:.0f} s** in all",
    ]
    for ref, v in pay.items():
        per = v["seconds_saved_per_concept"]
        lines.append(
            f"- vs {ref}: "
            + (
                "no median time saved per concept, so never paid back"
                if v["payback_concepts"] is None
                else f"{per:.2f} s saved per new concept (median times to target), paid back "
                f"after **{v['payback_concepts']:.0f}** new concepts"
            )
        )
    rows = extra.get("ablations") or {}
    if rows:
        lines += [
            "",
            "## Ablations (generated LoRA at step 0, medians over every held-out concept)",
            "",
            "| ablation | PSNR step 0 | SSIM step 0 | beats nearest | beats mean | s per concept |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['psnr_step0']:.2f} | {r['ssim_step0']:.3f} | "
                f"{100 * r['beats_nearest']:.0f}% | {100 * r['beats_mean']:.0f}% | "
                f"{r['seconds_per_concept']:.4f} |"
            )
    with md.open("a") as f:
        f.write("\n".join(lines) + "\n")
