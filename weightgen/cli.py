"""The `weightgen` command. Each subcommand calls library functions; `jobs/*.py` call the same ones.

Errors a user can cause print one line (`weightgen: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

for _k, _v in (
    ("HF_HUB_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("RAY_DEDUP_LOGS", "0"),
):
    os.environ.setdefault(_k, _v)


def _user_errors() -> tuple[type[BaseException], ...]:
    from weightgen.blocks import LayoutMismatchError
    from weightgen.concepts import UnknownConceptError
    from weightgen.data import DatasetError, StorageError
    from weightgen.errors import WeightgenError

    return (WeightgenError, UnknownConceptError, DatasetError, StorageError, LayoutMismatchError)


# ------------------------------------------------------------------------------------------------
# subcommands
# ------------------------------------------------------------------------------------------------


def cmd_concepts_list(args) -> int:
    from weightgen.concepts import concepts

    for c in concepts(args.split):
        print(f"{c.id}\t{c.family}\t{c.text}")
    return 0


def cmd_concepts_show(args) -> int:
    from weightgen.concepts import get_concept, save_concept_grid

    c = get_concept(args.id)
    _check_parent_writable(args.out)
    save_concept_grid(c, args.out, n=args.n, seed=args.seed)
    print(f"{c.id} ({c.family}): {c.text}")
    print(f"  paraphrases: {' | '.join(c.paraphrases)}")
    print(f"  wrote {args.out}")
    return 0


def cmd_base(args) -> int:
    from weightgen.config import get_preset
    from weightgen.gan import build_base, is_complete

    preset = get_preset(args.preset, args.set or ())
    out = Path(args.out) / "base"
    if is_complete(out) and not args.force:
        print(f"base already trained at {out} (use --force to retrain)")
        return 0
    _check_dir_writable(out)
    m = build_base(preset, out, steps=args.steps)
    mean_psnr = sum(v["psnr"] for v in m["eval"].values()) / len(m["eval"])
    print(
        f"base: {m['steps']} steps in {m['seconds']:.1f} s on {len(m['concepts'])} base concepts, "
        f"L1 {m['l1_first']:.4f} -> {m['l1_last']:.4f}, mean PSNR {mean_psnr:.2f} dB; wrote {out}"
    )
    return 0


def cmd_collect(args) -> int:
    from cluster.collect import collect
    from weightgen.config import get_preset

    get_preset(args.preset)  # unknown preset -> clear error before anything starts
    base = Path(args.base) if args.base else Path("runs") / "demo" / "base"
    s = collect(
        out=args.out,
        base=base,
        limit=args.limit,
        concept_ids=args.concept,
        seeds_per_concept=args.seeds,
        address=args.address,
        num_workers=args.workers,
    )
    _print_collect(s)
    return 0


def _print_collect(s) -> None:
    print(
        f"collected {s.accepted}/{s.planned} concepts into {s.out} in {s.seconds:.1f} s "
        f"({s.concepts_per_minute:.1f} concepts/min on {s.workers} workers); "
        f"{s.lora_params} LoRA values -> {s.num_blocks} blocks of {s.block_size}"
    )
    for r in s.rejected:
        print(f"  rejected {r['key']}: {r['reason']}")


def cmd_demo(args) -> int:
    from weightgen.config import get_preset
    from weightgen.eval.demo import run_demo

    preset = get_preset(args.preset)
    run = Path(args.out)
    _check_dir_writable(run)
    (run / "config.json").write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    run_demo(
        run,
        preset,
        concepts=args.concepts,
        workers=args.workers,
        finetune_concepts=args.finetune,
        train_steps=args.train_steps,
    )
    return 0


def _parse_lrs(items: list[str] | None) -> dict[str, float]:
    from weightgen.errors import WeightgenError

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise WeightgenError(f"--lr takes METHOD=RATE (e.g. scratch=0.003), got {item!r}")
    return out


def cmd_evaluate(args) -> int:
    from weightgen.errors import WeightgenError
    from weightgen.eval.ablations import check_ablations
    from weightgen.eval.benchmark import BenchConfig, run_benchmark

    if args.split != "heldout":
        raise WeightgenError("only --split heldout is evaluated (training concepts were collected)")
    gen = Path(args.generator).resolve()
    run = Path(args.run).resolve() if args.run else gen.parent
    for part in ("base", "dataset"):
        if not (run / part).is_dir():
            raise WeightgenError(f"no {part}/ beside the generator in {run}; pass --run RUN")
    if not (gen / "generator.json").is_file():
        raise WeightgenError(f"no trained generator at {gen} (expected {gen / 'generator.json'})")
    out = Path(args.out)
    _check_dir_writable(out)
    cfg = BenchConfig(
        per_family=args.per_family,
        skip_per_family=args.skip_per_family,
        lora_steps=args.lora_steps,
        scratch_max_steps=args.scratch_max_steps,
        sweep_concepts=args.sweep_concepts,
        sweep_steps=args.sweep_steps,
        sweep_lrs=tuple(args.sweep_lrs),
        lrs=_parse_lrs(args.lr),
        sample_steps=args.sample_steps,
        refine_strength=args.refine,
        blend=args.blend,
        workers=args.workers,
        finetune=not args.step0_only,
        concepts=args.concepts,
        step0_concepts=args.step0_concepts,
        fid_weights=args.fid_weights,
        patience_steps=args.patience_steps,
        min_gain_db=args.min_gain_db,
        lora_plateau=args.lora_until_plateau,
    )
    if cfg.fid_weights:
        from weightgen.eval.fid import fid_metric

        fid_metric(cfg.fid_weights)  # fail now, in one line, not after the fine-tunes
    run_benchmark(run, out, cfg, generator=gen, ablations=check_ablations(args.ablate or []))
    return 0


def cmd_sensitivity(args) -> int:
    from weightgen.errors import ConfigError
    from weightgen.gan.sensitivity import dataset_sensitivity

    for name in ("samples", "images", "probes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    s = dataset_sensitivity(
        args.base, args.data, samples=args.samples, images=args.images, probes=args.probes
    )
    print(f"sensitivity of {s['samples']} LoRAs ({s['probes']} probes) -> {args.data}/{s['file']}")
    print("largest mean loss weights: " + ", ".join(f"{k} {v:.1f}" for k, v in s["top_weights"]))
    return 0


def cmd_train(args) -> int:
    from jobs.train import main as train_main

    return train_main(args.train_argv)


def _read_texts(args) -> list[str]:
    from weightgen.errors import WeightgenError

    texts = list(args.text or [])
    if args.texts:
        try:
            texts += [t.strip() for t in Path(args.texts).read_text().splitlines() if t.strip()]
        except OSError as e:
            raise WeightgenError(f"cannot read --texts {args.texts}: {e.strerror or e}") from None
    if not texts:
        raise WeightgenError('no text given: pass --text "..." (repeatable) or --texts FILE')
    if any(not t.strip() for t in texts):
        raise WeightgenError("concept text must be a non-empty string")
    return texts


def _check_base_fits(bundle, base_dir: Path) -> tuple[dict, object]:
    """The base's LoRA layout must be the generator's, or the sampled LoRA cannot load."""
    from weightgen.blocks import BlockLayout, LayoutMismatchError
    from weightgen.collection import lora_template
    from weightgen.gan import load_base

    base_state, preset = load_base(base_dir)
    layout = BlockLayout.from_state_dict(lora_template(preset), block_size=bundle.layout.block_size)
    if layout.hash != bundle.layout.hash:
        raise LayoutMismatchError(
            f"layout mismatch between generator and base {base_dir}: the generator makes "
            f"{bundle.layout.num_params} LoRA values in {bundle.layout.num_blocks} blocks, this base "
            f"takes {layout.num_params} in {layout.num_blocks} (pass the base it was trained for)"
        )
    return base_state, preset


def cmd_sample(args) -> int:
    import time

    from safetensors.torch import save_file

    from weightgen.diffusion import generate_lora, load_generator

    texts = _read_texts(args)
    bundle = load_generator(args.generator)
    base_dir = Path(args.base) if args.base else Path(args.generator).resolve().parent / "base"
    if args.base or base_dir.is_dir():
        _check_base_fits(bundle, base_dir)
    t0 = time.perf_counter()
    loras = generate_lora(bundle, texts, steps=args.steps, guidance=args.guidance, seed=args.seed)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    single = len(texts) == 1 and out.suffix == ".safetensors"
    if single:
        _check_parent_writable(str(out))
        paths = [out]
    else:
        _check_dir_writable(out)
        paths = [out / f"{i:05d}.safetensors" for i in range(len(texts))]
    for path, text, lora in zip(paths, texts, loras):
        meta = {"text": text, "layout_hash": bundle.layout.hash, "steps": str(args.steps)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
    if not single:
        index = [{"file": p.name, "text": t} for p, t in zip(paths, texts)]
        (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"sampled {len(texts)} LoRA(s) in {seconds:.2f} s ({args.steps} step(s)); wrote {out}")
    return 0


def cmd_finetune(args) -> int:
    from safetensors.torch import load_file, save_file

    from weightgen.concepts import get_concept
    from weightgen.errors import WeightgenError
    from weightgen.eval.newconcept import WeightBaselines, blend_loras, finetune
    from weightgen.gan import load_base
    from weightgen.text import get_encoder

    concept = get_concept(args.concept)
    if not 0.0 < args.blend < 1.0:
        raise WeightgenError(f"--blend must be in (0, 1), got {args.blend}")
    run = Path(args.run)
    base_state, preset = load_base(Path(args.base) if args.base else run / "base")
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    tb = enc.encode([concept.text])
    init, method = None, {"zero": "lora-zero"}.get(args.init, args.init)
    if args.lora:
        init, method = load_file(args.lora), "generated"
    else:
        if args.init in ("generated", "blended"):
            from weightgen.diffusion import generate_lora, load_generator

            bundle = load_generator(Path(args.generator) if args.generator else run / "generator")
            init = generate_lora(bundle, [concept.text], encoder=enc)[0]
        if args.init in ("nearest", "mean", "blended"):
            b = WeightBaselines.from_dataset(args.dataset or str(run / "dataset"))
            if args.init == "mean":
                init = b.mean_lora
            else:
                near = b.nearest(tb.pooled[0])[0]
                init = near if args.init == "nearest" else blend_loras(init, near, args.blend)
    out = Path(args.out)
    _check_dir_writable(out)
    r = finetune(
        method,
        preset=preset,
        base_state=base_state,
        concept=concept,
        tokens=tb.tokens[0],
        mask=tb.mask[0],
        init_lora=init,
        steps=args.steps,
        lr=args.lr,
    )
    (out / "curve.json").write_text(json.dumps(r.metrics(), indent=2) + "\n")
    if r.lora is not None:
        save_file({k: v.contiguous() for k, v in r.lora.items()}, str(out / "lora.safetensors"))
    print(
        f"{concept.id} from {args.lora or args.init}: PSNR {r.psnr_step0:.2f} -> {r.psnr_final:.2f} dB, "
        f"SSIM {r.ssim_step0:.3f} -> {r.ssim_final:.3f} in {r.steps} steps / {r.train_seconds:.1f} s; wrote {out}"
    )
    return 0


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _check_dir_writable(path: Path) -> None:
    from weightgen.errors import WeightgenError

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WeightgenError(f"cannot write to {path}: {e.strerror or e}") from None


def _check_parent_writable(path: str) -> None:
    _check_dir_writable(Path(path).resolve().parent)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weightgen", description="Generate initial GAN weights from the text of a concept."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    pc = sub.add_parser("concepts", help="the concept catalogue")
    csub = pc.add_subparsers(dest="concepts_command", required=True)
    pl = csub.add_parser("list", help="one concept per line: id, family, text")
    pl.add_argument("--split", choices=["train", "heldout"], default=None)
    pl.set_defaults(func=cmd_concepts_list)
    ps = csub.add_parser("show", help="write a grid of inputs and edited targets")
    ps.add_argument("id")
    ps.add_argument("--out", required=True, help="PNG file")
    ps.add_argument("--n", type=int, default=6)
    ps.add_argument("--seed", type=int, default=0)
    ps.set_defaults(func=cmd_concepts_show)

    pb = sub.add_parser("base", help="pre-train the base GAN (writes OUT/base)")
    pb.add_argument("--preset", default="tiny")
    pb.add_argument("--out", required=True, help="run folder")
    pb.add_argument("--steps", type=int, default=None)
    pb.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a preset field, e.g. gan.channels=16 (repeatable; saved with the base, "
        "which collection, training and evaluation read)",
    )
    pb.add_argument("--force", action="store_true")
    pb.set_defaults(func=cmd_base)

    pk = sub.add_parser("collect", help="train one LoRA per concept through Ray; write shards")
    pk.add_argument("--preset", default="tiny")
    pk.add_argument(
        "--out", required=True, help="dataset URI: folder, file://..., s3://bucket/prefix"
    )
    pk.add_argument("--base", default=None, help="base folder (default runs/demo/base)")
    pk.add_argument("--limit", type=int, default=None, help="collect the first N training concepts")
    pk.add_argument(
        "--concept", action="append", default=None, help="collect this concept id (repeatable)"
    )
    pk.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    pk.add_argument("--workers", type=int, default=None, help="local Ray CPUs (default: all cores)")
    pk.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per concept (default: the preset's); re-runs resume: finished jobs are skipped",
    )
    pk.set_defaults(func=cmd_collect)

    pd = sub.add_parser("demo", help="the whole pipeline on the tiny preset")
    pd.add_argument("--out", default="runs/demo")
    pd.add_argument("--preset", default="tiny")
    pd.add_argument("--concepts", type=int, default=120, help="training concepts to collect")
    pd.add_argument("--workers", type=int, default=None)
    pd.add_argument("--finetune", type=int, default=6, help="held-out concepts to fine-tune")
    pd.add_argument("--train-steps", type=int, default=None, help="generator training steps")
    pd.set_defaults(func=cmd_demo)

    pz = sub.add_parser(
        "sensitivity",
        help="measure how much each LoRA value moves the image (for train --loss-weight "
        "sensitivity); writes DATA/sensitivity.safetensors",
    )
    pz.add_argument("--base", required=True, help="the base folder the data set was collected on")
    pz.add_argument("--data", required=True, help="dataset URI: folder, file://..., s3://...")
    pz.add_argument("--samples", type=int, default=60, help="LoRAs to measure (evenly spaced)")
    pz.add_argument("--images", type=int, default=8, help="photo crops per LoRA")
    pz.add_argument("--probes", type=int, default=4, help="random output projections per LoRA")
    pz.set_defaults(func=cmd_sensitivity)

    pt = sub.add_parser(
        "train",
        help="train the block diffusion generator (flags: see jobs/train.py)",
        add_help=False,
    )
    pt.set_defaults(func=cmd_train)

    pe = sub.add_parser(
        "evaluate", help="held-out benchmark: every method, learning-rate sweep, ablations, report"
    )
    pe.add_argument("--generator", required=True, help="generator folder (normally RUN/generator)")
    pe.add_argument(
        "--run", default=None, help="run folder with base/ and dataset/ (default: its parent)"
    )
    pe.add_argument("--split", default="heldout", choices=["heldout"])
    pe.add_argument("--out", required=True, help="report folder")
    pe.add_argument("--per-family", type=int, default=2, help="held-out concepts per family")
    pe.add_argument(
        "--skip-per-family",
        type=int,
        default=0,
        metavar="K",
        help="fine-tune the held-out concepts after each family's first K (a set disjoint from "
        "--per-family K's)",
    )
    pe.add_argument("--lora-steps", type=int, default=300, help="steps of the base + LoRA methods")
    pe.add_argument(
        "--scratch-max-steps", type=int, default=2000, help="cap of scratch's run to its plateau"
    )
    pe.add_argument(
        "--patience-steps", type=int, default=300, help="plateau: no --min-gain-db in this many"
    )
    pe.add_argument("--min-gain-db", type=float, default=0.2)
    pe.add_argument(
        "--lora-until-plateau",
        action="store_true",
        help="the base + LoRA methods stop at their plateau too (--lora-steps is their cap)",
    )
    pe.add_argument("--sweep-concepts", type=int, default=4, help="training concepts in the sweep")
    pe.add_argument("--sweep-steps", type=int, default=300)
    pe.add_argument("--sweep-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    pe.add_argument(
        "--lr", action="append", metavar="METHOD=RATE", help="fix a method's rate (no sweep)"
    )
    pe.add_argument("--sample-steps", type=int, default=1, help="DDIM steps for `generated`")
    pe.add_argument(
        "--refine",
        type=float,
        default=None,
        metavar="STRENGTH",
        help="add the `refined` method: the nearest training LoRA noised to STRENGTH in (0, 1] "
        "and denoised by the generator in one step",
    )
    pe.add_argument(
        "--blend",
        type=float,
        default=None,
        metavar="ALPHA",
        help="add the `blended` method: ALPHA in (0, 1) times the generated LoRA plus 1 - ALPHA "
        "times the nearest training LoRA, fine-tuned",
    )
    pe.add_argument("--workers", type=int, default=1, help="> 1: one Ray task per concept")
    pe.add_argument(
        "--ablate",
        action="append",
        metavar="NAME",
        help="ablation row (repeatable): block128 block512 per-block ddim10 empty-text no-index "
        "concepts50 concepts100 concepts200 ...",
    )
    pe.add_argument(
        "--step0-only", action="store_true", help="no fine-tunes: step-0 table and ablations"
    )
    pe.add_argument("--concepts", type=int, default=None, help="cap on fine-tuned concepts")
    pe.add_argument("--step0-concepts", type=int, default=None, help="cap on step-0 concepts")
    pe.add_argument(
        "--fid-weights", default=None, help="local Inception weights: adds FID (torch-fidelity)"
    )
    pe.set_defaults(func=cmd_evaluate)

    pa = sub.add_parser("sample", help="text -> LoRA .safetensors in one denoising step")
    pa.add_argument("--generator", required=True, help="generator folder (RUN/generator)")
    pa.add_argument("--text", action="append", help="concept text (repeatable: one batch)")
    pa.add_argument("--texts", help="file with one text per line")
    pa.add_argument("--out", required=True, help="FILE.safetensors (one text) or a folder")
    pa.add_argument("--steps", type=int, default=1, help="1: single step; >1: DDIM")
    pa.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--base", default=None, help="base folder to check the layout against")
    pa.set_defaults(func=cmd_sample)

    pf = sub.add_parser("finetune", help="fine-tune one concept from an initialisation")
    pf.add_argument("--concept", required=True, help="concept id (weightgen concepts list)")
    pf.add_argument(
        "--init",
        choices=["generated", "zero", "scratch", "nearest", "mean", "blended"],
        default="generated",
    )
    pf.add_argument(
        "--blend",
        type=float,
        default=0.5,
        metavar="ALPHA",
        help="--init blended: ALPHA x the generated LoRA + (1 - ALPHA) x the nearest training LoRA",
    )
    pf.add_argument(
        "--lora", default=None, help="start from this LoRA .safetensors (e.g. from sample)"
    )
    pf.add_argument(
        "--run", default="runs/demo", help="run folder with base/, dataset/, generator/"
    )
    pf.add_argument("--base", default=None)
    pf.add_argument("--generator", default=None)
    pf.add_argument("--dataset", default=None)
    pf.add_argument("--steps", type=int, default=None)
    pf.add_argument("--lr", type=float, default=None)
    pf.add_argument("--out", required=True)
    pf.set_defaults(func=cmd_finetune)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if (
        argv and argv[0] == "train"
    ):  # `weightgen train` takes the flags of jobs/train.py as they are
        args = argparse.Namespace(func=cmd_train, train_argv=argv[1:], verbose=False)
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        errors = _user_errors()
    except ImportError as e:  # a broken install is itself a user-facing error
        print(f"weightgen: error: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except errors as e:
        if args.verbose:
            raise
        msg = str(e)
        if isinstance(e, KeyError) and type(e).__str__ is KeyError.__str__ and e.args:
            msg = str(e.args[0])  # KeyError's own str() is the repr of its argument
        print(
            f"weightgen: error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print("weightgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
