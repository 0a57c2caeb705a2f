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

from weightgen import export
from weightgen.paths import check_dir_writable, check_parent_writable

for _k, _v in (
    ("HF_HUB_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("RAY_DEDUP_LOGS", "0"),
):
    os.environ.setdefault(_k, _v)


def _user_errors() -> tuple[type[BaseException], ...]:
    from weightgen.blocks import LayoutMismatchError
    from weightgen.concepts import SplitError, UnknownConceptError
    from weightgen.data import DatasetError, StorageError
    from weightgen.errors import WeightgenError

    return (
        WeightgenError, UnknownConceptError, SplitError, DatasetError, StorageError,
        LayoutMismatchError,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# subcommands
# ------------------------------------------------------------------------------------------------


def cmd_concepts_list(args) -> int:
    from weightgen.concepts import Splits, concepts
    from weightgen.config import load_config

    if args.split is None:
        chosen = concepts()
    else:
        chosen = Splits.of(load_config(args.config, args.set)).concepts(args.split)
    for c in chosen:
        print(f"{c.id}\t{c.family}\t{c.text}")
    return 0


def cmd_concepts_show(args) -> int:
    from weightgen.concepts import get_concept, save_concept_grid

    c = get_concept(args.id)
    check_parent_writable(args.out)
    save_concept_grid(c, args.out, n=args.n, seed=args.seed)
    print(f"{c.id} ({c.family}): {c.text}")
    print(f"  paraphrases: {' | '.join(c.paraphrases)}")
    print(f"  wrote {args.out}")
    return 0


def cmd_base(args) -> int:
    from weightgen.config import load_config, save_resolved
    from weightgen.gan import build_base, is_complete

    preset = load_config(args.config, args.set)
    out = Path(args.out) / "base"
    if is_complete(out) and not args.force:
        print(f"base already trained at {out} (use --force to retrain)")
        return 0
    check_dir_writable(out)
    m = build_base(preset, out)
    save_resolved(preset, out, source=args.config, overrides=args.set)
    mean_psnr = sum(v["psnr"] for v in m["eval"].values()) / len(m["eval"])
    print(
        f"base: {m['steps']} steps in {m['seconds']:.1f} s on {len(m['concepts'])} base concepts, "
        f"L1 {m['l1_first']:.4f} -> {m['l1_last']:.4f}, mean PSNR {mean_psnr:.2f} dB; wrote {out}"
    )
    return 0


def cmd_collect(args) -> int:
    from weightgen.collect import collect
    from weightgen.concepts.sources import pair_sources
    from weightgen.config import load_config, only_sections

    base = Path(args.base) if args.base else Path("runs") / "demo" / "base"
    # the base fixes the GAN and LoRA; what and how to collect is the [collect] section of the
    # run's own recipe (saved with its base) or of --config, with --set collect.FIELD on top;
    # the data set's config.json records the result
    only_sections(args.set, ("collect",), "collect")
    sources = pair_sources(args.pairs_root, args.editor, args.instruction, args.instructions)
    s = collect(
        out=args.out,
        base=base,
        concept_ids=args.concept if args.concept or not sources else [],
        sources=sources,
        address=args.address,
        num_workers=args.workers,
        collect_cfg=None if args.config is None else load_config(args.config).collect,
        overrides=args.set,
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


def cmd_benchmark(args) -> int:
    """`weightgen benchmark` and `weightgen demo` (its short recipe, report in RUN/report)."""
    import dataclasses

    from weightgen.config import load_config, save_resolved
    from weightgen.errors import WeightgenError
    from weightgen.eval.pipeline import check_same_recipe, run_pipeline

    preset = load_config(args.config, args.set)
    split = getattr(args, "split", None)
    if split is not None:
        preset = dataclasses.replace(preset, bench=dataclasses.replace(preset.bench, split=split))
    if preset.bench.split.startswith("family:"):  # its run is derived from a finished one
        raise WeightgenError(
            f"bench.split = {preset.bench.split}: the benchmark evaluates heldout, novel or "
            "validation; a family split runs `weightgen evaluate` on a derived run"
        )
    run = Path(args.out)
    check_dir_writable(run)
    if (run / "generator" / "generator.json").is_file():  # before the run's records are rewritten
        check_same_recipe(run / "generator", preset.generator)
    report = Path(args.report) if getattr(args, "report", None) else None
    if args.command == "benchmark" and report is None:
        report = run / preset.bench.split
    if report is not None:
        check_dir_writable(report)
    (run / "config.json").write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    save_resolved(preset, run, source=args.config, overrides=args.set)
    if report is not None:
        save_resolved(preset, report, source=args.config, overrides=args.set)
    title = f"weightgen demo ({preset.name} config)" if args.command == "demo" else None
    run_pipeline(run, preset, workers=args.workers, report=report, title=title)
    return 0


def cmd_results_pool(args) -> int:
    from weightgen.eval.results import pool_reports

    rep = pool_reports(args.reports, args.out)
    print(
        f"pooled {len(rep['runs'])} fine-tuned concepts from {len(args.reports)} reports -> {args.out}"
    )
    return 0


def cmd_results_index(args) -> int:
    from weightgen.eval.results import write_results_index

    print(f"wrote {write_results_index(args.root, args.out)}")
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
    from weightgen.train.command import main as train_main

    return train_main(args.train_argv)


def cmd_finetune(args) -> int:
    import dataclasses

    from safetensors.torch import load_file, save_file

    from weightgen.concepts import get_concept
    from weightgen.config import load_config, only_sections, override, save_resolved
    from weightgen.errors import WeightgenError
    from weightgen.eval.newconcept import finetune
    from weightgen.gan import load_base
    from weightgen.initial import INITS, WeightBaselines, initial_loras
    from weightgen.text import get_encoder

    concept = get_concept(args.concept)
    run = Path(args.run)
    base_state, preset = load_base(Path(args.base) if args.base else run / "base")
    # the base fixes the GAN and LoRA; the fine-tune and sampling settings are the run's own
    # recipe (saved with its base), or those of --config; --set changes either
    only_sections(args.set, ("concept", "sample"), "finetune")
    if args.config is not None:
        recipe = load_config(args.config)
        preset = dataclasses.replace(preset, concept=recipe.concept, sample=recipe.sample)
    preset = override(preset, args.set)
    blend = preset.sample.blend
    if args.init == "blended" and not 0.0 < blend < 1.0:
        raise WeightgenError(f"--init blended needs sample.blend in (0, 1), got {blend}")
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    tb = enc.encode([concept.text])
    init, method = None, {"zero": "lora-zero"}.get(args.init, args.init)
    if args.lora:
        init, method = load_file(args.lora), "generated"
    elif args.init in INITS:
        bundle = baselines = None
        if args.init in ("generated", "blended"):
            from weightgen.diffusion import load_generator

            bundle = load_generator(Path(args.generator) if args.generator else run / "generator")
        if args.init != "generated":
            baselines = WeightBaselines.from_dataset(args.dataset or str(run / "dataset"))
        (init,), _ = initial_loras(
            args.init, [concept.text], sample=preset.sample, bundle=bundle,
            baselines=baselines, encoder=enc,
        )  # fmt: skip
    out = Path(args.out)
    check_dir_writable(out)
    r = finetune(
        method,
        preset=preset,
        base_state=base_state,
        concept=concept,
        tokens=tb.tokens[0],
        mask=tb.mask[0],
        init_lora=init,
    )
    save_resolved(preset, out, source=args.config or "the run's base", overrides=args.set)
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


def cmd_new_concept(args) -> int:
    from weightgen.adapt import describe, new_concept

    s = new_concept(args.pairs, args.text, args.out, model=args.model, init=args.init,
                    steps=args.steps, compare=args.compare, overrides=tuple(args.set))  # fmt: skip
    print(f"{describe(s)}; wrote {args.out}")
    return 0


def cmd_apply(args) -> int:
    from weightgen.adapt import ModelDir, default_model
    from weightgen.api import Base, LoRA
    from weightgen.apply import edit_files, list_images

    lora = LoRA.from_pretrained(args.lora)
    files = list_images(args.images)
    md = ModelDir.find(args.model if args.model else default_model())
    base = Base.from_pretrained(md.base)
    editor = base.editor(lora, args.text)  # a LoRA of another layout fails here, in one line
    out = Path(args.out)
    check_dir_writable(out)
    n = sum(1 for _ in edit_files(editor, files, out, mode=args.mode))
    print(f"edited {n} image(s) with {args.lora} ({args.mode} mode) -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from weightgen.config import add_config_args
    from weightgen.eval.ablations import add_derive_parser
    from weightgen.eval.command import add_evaluate_parser
    from weightgen.sampling import add_sample_parser

    p = argparse.ArgumentParser(
        prog="weightgen", description="Generate initial GAN weights from the text of a concept."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    pc = sub.add_parser("concepts", help="the concept catalogue")
    csub = pc.add_subparsers(dest="concepts_command", required=True)
    pl = csub.add_parser("list", help="one concept per line: id, family, text")
    pl.add_argument(
        "--split",
        choices=("train", "validation", "heldout", "novel"),  # concepts.SPLIT_NAMES
        default=None,
        help="only this split of the recipe (its [split] section; default: every concept)",
    )
    add_config_args(pl)
    pl.set_defaults(func=cmd_concepts_list)
    ps = csub.add_parser("show", help="write a grid of inputs and edited targets")
    ps.add_argument("id")
    ps.add_argument("--out", required=True, help="PNG file")
    ps.add_argument("--n", type=int, default=6)
    ps.add_argument("--seed", type=int, default=0)
    ps.set_defaults(func=cmd_concepts_show)

    pb = sub.add_parser("base", help="pre-train the base GAN (writes OUT/base)")
    pb.add_argument("--out", required=True, help="run folder")
    add_config_args(pb)
    pb.add_argument("--force", action="store_true")
    pb.set_defaults(func=cmd_base)

    pk = sub.add_parser("collect", help="train one LoRA per concept through Ray; write shards")
    add_config_args(pk, default=None)  # None: the run's own recipe, saved with its base
    pk.add_argument(
        "--out", required=True, help="dataset URI: folder, file://..., s3://bucket/prefix"
    )
    pk.add_argument("--base", default=None, help="base folder (default runs/demo/base)")
    pk.add_argument(
        "--concept", action="append", default=None, help="collect this concept id (repeatable)"
    )
    pk.add_argument("--pairs-root", default=None, help="your concepts: one sub-folder each "
                    "(A/ and B/, or AB images) with its sentence in text.txt")  # fmt: skip
    pk.add_argument("--editor", default=None, help="a local diffusers image-editing pipeline "
                    "folder (InstructPix2Pix style): one concept per instruction")  # fmt: skip
    pk.add_argument("--instruction", action="append", help="an edit instruction for --editor")
    pk.add_argument("--instructions", default=None, help="a file of instructions, one per line")
    pk.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    pk.add_argument("--workers", type=int, default=None, help="local Ray CPUs (default: all cores)")
    pk.set_defaults(func=cmd_collect)

    pd = sub.add_parser("demo", help="the whole pipeline on one machine (configs/demo.toml)")
    pd.add_argument("--out", default="runs/demo")
    add_config_args(pd, default="demo")
    pd.add_argument("--workers", type=int, default=None, help="local Ray CPUs for collection")
    pd.set_defaults(func=cmd_benchmark)

    pb = sub.add_parser(
        "benchmark",
        help="the benchmark from nothing: base, collection, generator, evaluation (each stage "
        "resumed or reused), a report per split",
    )
    pb.add_argument("--out", required=True, help="run folder (base/, dataset/, generator/)")
    add_config_args(pb)
    pb.add_argument(
        "--split",
        choices=("heldout", "novel"),
        default=None,
        help="evaluated split (default: the recipe's bench.split)",
    )
    pb.add_argument("--report", default=None, help="report folder (default: RUN/SPLIT)")
    pb.add_argument("--workers", type=int, default=None, help="local Ray CPUs for collection")
    pb.set_defaults(func=cmd_benchmark)

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
        help="train the block diffusion generator (flags: weightgen train --help)",
        add_help=False,
    )
    pt.set_defaults(func=cmd_train)

    add_evaluate_parser(sub)
    add_derive_parser(sub)

    pr = sub.add_parser("results", help="pool benchmark reports; write docs/results.md")
    rsub = pr.add_subparsers(dest="results_command", required=True)
    rp = rsub.add_parser("pool", help="reports of one run on disjoint concepts -> one report")
    rp.add_argument("reports", nargs="+", help="report.json files")
    rp.add_argument("--out", required=True, help="folder for the pooled report")
    rp.set_defaults(func=cmd_results_pool)
    ri = rsub.add_parser("index", help="one table per split from ROOT/*/report.json")
    ri.add_argument("root", nargs="?", default="docs/results")
    ri.add_argument("--out", default=None, help="markdown file (default: ROOT.md)")
    ri.set_defaults(func=cmd_results_index)

    add_sample_parser(sub)

    pf = sub.add_parser("finetune", help="fine-tune one concept from an initialisation")
    pf.add_argument("--concept", required=True, help="concept id (weightgen concepts list)")
    pf.add_argument(
        "--init",
        choices=["generated", "zero", "scratch", "nearest", "mean", "blended"],
        default="generated",
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
    pf.add_argument("--out", required=True)
    add_config_args(pf, default=None)  # None: the run's own recipe, saved with its base
    pf.set_defaults(func=cmd_finetune)

    pn = sub.add_parser(
        "new-concept",
        help="train a LoRA for your own edit: a folder of before/after pairs and a sentence",
    )
    pn.add_argument("--pairs", required=True, help="A/ and B/ with matching names, or AB images")
    pn.add_argument("--text", required=True, help="one sentence describing the edit")
    pn.add_argument("--out", required=True, help="output folder (LoRA, adapter/, curves, preview)")
    pn.add_argument(
        "--init",
        choices=("generated", "nearest", "blended", "picked", "zero"),
        default="generated",
        help="initial LoRA (default generated; nearest/blended need the run's dataset/; picked: "
        "of generated, its enlargements and (with a dataset/) nearest and their blends, the one "
        "with the lowest loss on your training pairs)",
    )
    pn.add_argument(
        "--steps", type=int, default=None, help="train this many steps (default: until plateau)"
    )
    pn.add_argument(
        "--model", default=None, help="run or model folder (default: models/tiny, else runs/demo)"
    )
    pn.add_argument(
        "--compare", action="store_true", help="also train LoRA-from-zero, report the speed-up"
    )
    pn.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="change a concept.* or sample.* field, e.g. concept.lr=0.001",
    )
    pn.set_defaults(func=cmd_new_concept)

    pp = sub.add_parser("apply", help="edit photos with a LoRA (any size; tiled or resized)")
    pp.add_argument("--lora", required=True, help="LoRA .safetensors file or PEFT adapter folder")
    pp.add_argument("--images", required=True, help="an image file or a folder of images")
    pp.add_argument("--out", required=True, help="output folder (one PNG per image)")
    pp.add_argument(
        "--model", default=None, help="run or model folder (default: models/tiny, else runs/demo)"
    )
    pp.add_argument("--text", default=None, help="the concept's sentence (default: the LoRA's)")
    pp.add_argument(
        "--mode",
        choices=("tile", "resize"),
        default="tile",
        help="tile: full resolution in overlapping tiles; resize: whole-frame edits, the change made "
        "at the model's size added to the full-size photo",
    )
    pp.set_defaults(func=cmd_apply)
    export.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if (
        argv and argv[0] == "train"
    ):  # `weightgen train` takes the flags of weightgen.train.command as they are
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
