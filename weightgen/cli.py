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

    preset = get_preset(args.preset)
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
    from cluster.collect import collect
    from weightgen.config import get_preset
    from weightgen.data import read_manifest
    from weightgen.gan import build_base, is_complete

    preset = get_preset(args.preset)
    run = Path(args.out)
    _check_dir_writable(run)
    (run / "config.json").write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    base = run / "base"
    if is_complete(base):
        print(f"[1/2] base: reusing {base}")
    else:
        print("[1/2] base: pre-training the base generator on the base concepts")
        build_base(preset, base)
    dataset = run / "dataset"
    if (dataset / "manifest.json").is_file():
        m = read_manifest(str(dataset))
        print(f"[2/2] dataset: reusing {dataset} ({m.num_samples} samples)")
    else:
        print(f"[2/2] dataset: collecting {args.concepts} training concepts through Ray")
        _print_collect(
            collect(out=str(dataset), base=base, limit=args.concepts, num_workers=args.workers)
        )
    m = read_manifest(str(dataset))
    print(
        f"demo: built {run}/base and {run}/dataset ({m.num_samples} LoRA weight sets, "
        f"{m.num_blocks} blocks x {m.block_size} each, {len(m.shards)} shards). "
        "The generator stages (train / sample / evaluate) are not built yet."
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
    pk.set_defaults(func=cmd_collect)

    pd = sub.add_parser("demo", help="the whole pipeline on the tiny preset")
    pd.add_argument("--out", default="runs/demo")
    pd.add_argument("--preset", default="tiny")
    pd.add_argument("--concepts", type=int, default=120, help="training concepts to collect")
    pd.add_argument("--workers", type=int, default=None)
    pd.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
