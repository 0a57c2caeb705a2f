"""`weightgen train` and `jobs/train.py`: train the weight generator, in one process or under torchrun.

  weightgen train --data runs/demo/dataset --out runs/demo/generator [--config tiny]
  DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 jobs/train.py --data D --out R \
      --set generator.zero_stage=2
  torchrun --nnodes N --nproc_per_node G ... jobs/train.py --config paper --data s3://b/p --out R \
      --set generator.size=large --set generator.zero_stage=3 --set generator.stream=true

Every setting is a field of the config tree's [generator] section (weightgen.config.TrainConfig):
`--config NAME|FILE.toml` picks the recipe, `--set generator.FIELD=VALUE` changes one field. The
image loss needs the base the data set was collected on: RUN/base beside a local RUN/dataset is
found by itself, any other is `--set generator.base=PATH`.

Rank 0 prints one line `summary: {json}` at the end and writes OUT/resolved-config.json; errors a
user can cause are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from weightgen.config import add_config_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weightgen train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="data set URI (path, file://, s3://)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, tb, exported generator")
    add_config_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the last complete checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _local_base(data: str) -> str | None:
    """RUN/base beside a local RUN/dataset, when it is a complete base."""
    if "://" in data and not data.startswith("file://"):
        return None
    base = Path(data.removeprefix("file://")).resolve().parent / "base"
    return str(base) if (base / "metrics.json").is_file() else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from weightgen.config import load_config, save_resolved
    from weightgen.errors import WeightgenError
    from weightgen.train import train_generator

    try:
        preset = load_config(args.config, args.set)
        cfg = preset.generator
        if cfg.image_loss > 0 and cfg.base is None:
            cfg.base = _local_base(args.data)  # None when there is none: train_generator says so
        summary = train_generator(
            args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress
        )
    except WeightgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        save_resolved(preset, args.out, source=args.config, overrides=args.set)
        print("summary: " + json.dumps(summary), flush=True)
    return 0
