"""Train the weight generator: the flags of `weightgen train`, for one process or torchrun.

  python jobs/train.py --data runs/demo/dataset --out runs/demo/generator
  DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 jobs/train.py --data D --out R --zero 2
  torchrun --nnodes N --nproc_per_node G ... jobs/train.py --preset paper --data s3://b/p --out R --zero 3
  ... jobs/train.py --data s3://b/p --out R --stream --epoch-samples 100000 --num-workers 4

--stream reads batches from the shards (split by rank and worker, resampled) instead of loading the
data set into memory, and normalises them on the training device.

Rank 0 prints one line `summary: {json}` at the end; errors a user can cause are one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="data set URI (path, file://, s3://)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, tb, exported generator")
    p.add_argument("--preset", default="tiny", help="train preset: tiny | paper")
    p.add_argument("--zero", type=int, choices=(1, 2, 3), default=None, help="ZeRO stage")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument(
        "--resume", action="store_true", help="continue from the last complete checkpoint"
    )
    p.add_argument("--size", choices=("tiny", "base", "large"), default=None, help="model size")
    p.add_argument("--per-block", action="store_true", default=None, help="paper's per-block mode")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch (all ranks)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per rank")
    p.add_argument(
        "--stream",
        action="store_true",
        default=None,
        help="stream the shards (local or s3://) instead of loading the data set into memory",
    )
    p.add_argument(
        "--epoch-samples",
        type=int,
        default=None,
        help="with --stream: samples per epoch over all ranks (default: the data set's size)",
    )
    p.add_argument(
        "--shuffle-buffer", type=int, default=None, help="with --stream: shuffle buffer size"
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader worker processes per rank"
    )
    p.add_argument(
        "--paraphrases",
        action="store_true",
        default=None,
        help="text augmentation: train on a random phrasing (text or paraphrase) of each concept",
    )
    p.add_argument(
        "--last-t-frac",
        type=float,
        default=None,
        help="share of samples trained at t = T-1, where one-step sampling starts (default 0.5)",
    )
    p.add_argument(
        "--loss-weight",
        choices=["uniform", "sensitivity"],
        default=None,
        help="x0-loss weight per value: uniform, or by how much each value moves the image "
        "(needs `weightgen sensitivity` on the data set first)",
    )
    p.add_argument(
        "--image-loss",
        type=float,
        default=None,
        help="weight of the image loss: pixel MSE of base + the one-step LoRA against each "
        "concept's exact edit (needs --base; default 0: off)",
    )
    p.add_argument(
        "--image-loss-samples", type=int, default=None, help="concepts per step in the image loss"
    )
    p.add_argument(
        "--image-loss-start",
        type=int,
        default=None,
        help="first step of the image loss (default 0)",
    )
    p.add_argument(
        "--image-loss-ramp",
        type=int,
        default=None,
        help="steps over which the image loss's weight rises to --image-loss (default 0)",
    )
    p.add_argument("--base", default=None, help="the base GAN folder the data set was collected on")
    p.add_argument(
        "--text-noise",
        type=float,
        default=None,
        help="relative Gaussian noise on the text embeddings while training (default 0: off)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="GENERATOR",
        help="warm start: a fresh run starts from this exported generator's weights (same model "
        "config; e.g. a new data set on the same LoRA layout)",
    )
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from weightgen.errors import WeightgenError
    from weightgen.train import train_config, train_generator

    try:
        cfg = train_config(
            args.preset,
            size=args.size,
            zero_stage=args.zero,
            max_steps=args.max_steps,
            per_block=args.per_block,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            log_every=args.log_every,
            ckpt_every=args.ckpt_every,
            threads=args.threads,
            bf16=args.bf16,
            stream=args.stream,
            epoch_samples=args.epoch_samples,
            shuffle_buffer=args.shuffle_buffer,
            num_workers=args.num_workers,
            paraphrases=args.paraphrases,
            last_t_frac=args.last_t_frac,
            loss_weight=args.loss_weight,
            image_loss=args.image_loss,
            image_loss_samples=args.image_loss_samples,
            image_loss_start=args.image_loss_start,
            image_loss_ramp=args.image_loss_ramp,
            base=args.base,
            text_noise=args.text_noise,
            init_from=args.init,
        )
        summary = train_generator(
            args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress
        )
    except WeightgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print("summary: " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
