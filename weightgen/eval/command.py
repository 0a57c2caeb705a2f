"""`weightgen evaluate`: the held-out benchmark from the command line (weightgen.eval.benchmark).
Its settings are the config tree's [bench] section: `--config NAME --set bench.FIELD=VALUE`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from weightgen.config import add_config_args
from weightgen.paths import check_dir_writable


def add_evaluate_parser(sub) -> None:
    """Register `evaluate` on the `weightgen` subparsers `sub`."""
    pe = sub.add_parser(
        "evaluate",
        help="benchmark of a trained run: every method, learning-rate sweep, ablations, report",
    )
    pe.add_argument("--generator", required=True, help="generator folder (normally RUN/generator)")
    pe.add_argument(
        "--run", default=None, help="run folder with base/ and dataset/ (default: its parent)"
    )
    pe.add_argument(
        "--split",
        default=None,
        help="evaluated split: heldout, novel, validation (where a recipe or lever is chosen) or "
        "family:NAME (a training family left out of the generator's data set; default: the "
        "recipe's bench.split)",
    )
    pe.add_argument("--out", required=True, help="report folder")
    add_config_args(pe)
    pe.add_argument(
        "--ablate",
        action="append",
        metavar="NAME",
        help="ablation row (repeatable): block128 block512 per-block ddim10 empty-text no-index "
        "concepts50 concepts100 concepts200 ...",
    )
    pe.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from weightgen.config import load_config, save_resolved
    from weightgen.errors import WeightgenError
    from weightgen.eval.ablations import check_ablations
    from weightgen.eval.benchmark import run_benchmark

    gen = Path(args.generator).resolve()
    run = Path(args.run).resolve() if args.run else gen.parent
    for part in ("base", "dataset"):
        if not (run / part).is_dir():
            raise WeightgenError(f"no {part}/ beside the generator in {run}; pass --run RUN")
    if not (gen / "generator.json").is_file():
        raise WeightgenError(f"no trained generator at {gen} (expected {gen / 'generator.json'})")
    out = Path(args.out)
    check_dir_writable(out)
    preset = load_config(args.config, args.set)
    cfg = preset.bench
    if args.split is not None:
        cfg = dataclasses.replace(cfg, split=args.split)
    if cfg.fid_weights:
        from weightgen.eval.fid import fid_metric

        fid_metric(cfg.fid_weights)  # fail now, in one line, not after the fine-tunes
    ablations = check_ablations(args.ablate or [])
    save_resolved(preset, out, source=args.config, overrides=args.set)
    run_benchmark(run, out, cfg, generator=gen, ablations=ablations)
    return 0
