"""Train the block diffusion generator through a DeepSpeed engine (ZeRO 1/2/3).

One code path for one process (this module sets the launcher variables itself: RANK=0,
WORLD_SIZE=1, a free MASTER_PORT) and for `torchrun --nproc_per_node G` (gloo on CPU with
DS_ACCELERATOR=cpu, NCCL on GPU). Output folder OUT:
  checkpoints/step-NNNNNNN/   DeepSpeed state + ema.safetensors + trainer.json + COMPLETE (last)
  tb/                         TensorBoard scalars: train/loss, train/grad_norm, train/lr, train/samples_per_s
  train_log.jsonl             the same scalars, one JSON line per logged step (rank 0)
  config.json                 the resolved TrainConfig
  model/ layout.json stats.safetensors generator.json   the export (generator.json last)

Data: by default the whole data set is loaded, normalised, into memory (weightgen.train.data).
With `stream=True` the batches come from the shards (local or s3://) through
weightgen.train.stream.StepStream (split by rank and DataLoader worker, resampled shards, epochs of
`epoch_samples` samples, seeds per (seed, rank, part, epoch)), and the raw blocks are normalised on
the training device after the copy (weightgen.blocks.normalize: the Triton kernel on CUDA).
Either way the batch of step t is a pure function of the config, rank and t, so a resumed run
trains on exactly the batches the uninterrupted run did (streaming: see stream.py for the cost).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import socket
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from weightgen.config.generator import (
    _RESUME_FIXED,
    _RESUME_FIXED_STREAM,
    TrainConfig,
)
from weightgen.diffusion.model import BlockDiT, block_dit, count_params
from weightgen.diffusion.neighbors import BANK_FILE
from weightgen.diffusion.pairs import PAIR_DIM
from weightgen.diffusion.sampler import (
    GENERATOR_JSON,
    LAYOUT_JSON,
    MODEL_DIR,
    STATS_FILE,
    GeneratorError,
    load_generator,
)
from weightgen.diffusion.schedule import (
    BETA_SCHEDULE,
    NUM_TRAIN_TIMESTEPS,
    diffusion_loss,
    make_train_scheduler,
)
from weightgen.errors import ConfigError
from weightgen.train.checkpoint import (
    EMA,
    export_ema,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from weightgen.train.data import (
    StepBatches,
    StreamData,
    TrainData,
    TrainError,
    load_loss_weights,
    load_train_data,
    open_stream_data,
)
from weightgen.train.stream import ShardStream, StepStream, normalize_on_device

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
# --------------------------------------------------------------------------------------------
# Process group and DeepSpeed
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); launcher variables set for one process when absent."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    if "RANK" not in os.environ and not (dist.is_available() and dist.is_initialized()):
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL comes up: one GPU per local rank
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return dist.get_rank(), dist.get_world_size(), device


def ds_config_file(stage: int):
    """The shipped DeepSpeed config of ZeRO `stage` (a Traversable: a file of the install)."""
    path = importlib.resources.files("weightgen.configs") / "deepspeed" / f"zero{stage}.json"
    if not path.is_file():
        raise TrainError(
            f"DeepSpeed config {path} is missing from the installed weightgen; reinstall it"
        )
    return path


def deepspeed_config(cfg: TrainConfig, world: int, bf16: bool) -> dict[str, Any]:
    """configs/deepspeed/zero{stage}.json (package data of weightgen.configs) merged with this
    run's values. TrainError naming the file when it is missing."""
    base = json.loads(ds_config_file(cfg.zero_stage).read_text())
    base.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must divide by the {world} ranks")
    return {
        **base,
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch_size // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {**base.get("bf16", {}), "enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _all_mean(x: float, device: torch.device) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t.item())


def _grad_norm(engine) -> float | None:
    g = engine.get_global_grad_norm()
    if g is None:
        return None
    return float(g.item() if torch.is_tensor(g) else g)


# --------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------


def _prepare_out(out: Path, cfg: TrainConfig, resume: bool) -> int | None:
    """Checks OUT against resume; returns the step to resume from (None: start fresh)."""
    last = latest_checkpoint(out)
    if last is not None and not resume:
        raise TrainError(
            f"{out} already holds checkpoints (last step {last[0]}); pass --resume to continue "
            "or choose a new --out"
        )
    if last is None:
        return None
    old = out / "config.json"
    if old.is_file():
        now, defaults = cfg.to_dict(), TrainConfig().to_dict()
        prev = {**defaults, **json.loads(old.read_text())}  # keys added since: their defaults
        fixed = _RESUME_FIXED + (_RESUME_FIXED_STREAM if cfg.stream else ())
        changed = [k for k in fixed if prev.get(k) != now.get(k)]
        if changed:
            raise TrainError(
                f"cannot resume {out}: {', '.join(changed)} differ from the checkpointed run "
                "(start a new --out to change them)"
            )
    return last[0]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _trim_log(path: Path, keep_upto: int) -> None:
    """Drop log lines of steps after `keep_upto` (work lost since the resumed checkpoint)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["step"] <= keep_upto]
    path.write_text("".join(ln + "\n" for ln in kept))


def load_init(gen_dir: str | os.PathLike) -> BlockDiT:
    """The exported generator at `gen_dir` (its EMA weights), for `init_weights`, through
    `load_generator` and its completeness checks. TrainError when it cannot be loaded."""
    try:
        return load_generator(gen_dir).model
    except GeneratorError as e:
        raise TrainError(f"init_from: cannot start from {gen_dir}: {e}") from None


def init_weights(model: BlockDiT, src: BlockDiT, what: str = "init_from") -> None:
    """Copy `src`'s weights into `model` (in place). TrainError when their configs differ."""
    mine, theirs = dict(model.config), dict(src.config)
    diff = {
        k: (theirs.get(k), mine.get(k))
        for k in sorted(mine.keys() | theirs.keys())
        if not k.startswith("_") and theirs.get(k) != mine.get(k)
    }
    if diff:
        shown = ", ".join(f"{k}: {a} there, {b} here" for k, (a, b) in list(diff.items())[:4])
        raise TrainError(f"{what}: that generator is another model ({shown})")
    model.load_state_dict(src.state_dict(), strict=True)


def _export(
    out: Path, engine, ema: EMA, data: TrainData | StreamData, cfg: TrainConfig, meta: dict
) -> None:
    export_ema(BlockDiT, dict(engine.module.config), ema, out / MODEL_DIR)
    (out / LAYOUT_JSON).write_bytes(data.layout_bytes)
    (out / STATS_FILE).write_bytes(data.stats_bytes)
    if getattr(data, "bank", None) is not None:
        data.bank.save(out / BANK_FILE)
    _write_json(out / GENERATOR_JSON, meta)  # last: marks the export complete


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _batches(data, cfg: TrainConfig, rank: int, world: int, rank_seed: int, start: int, device):
    """(DataLoader over the steps [start, max_steps) on this rank, batch x0 -> normalised x0 on
    `device`): in memory, x0 comes normalised; streamed, raw blocks are normalised on `device`."""
    b = cfg.batch_size // world
    if not cfg.stream:
        ds = StepBatches(
            data, rank, world, b, rank_seed, start, cfg.max_steps, cfg.neighbor_family_drop
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.num_workers)
        return loader, lambda x0: x0.to(device)
    epoch_samples = cfg.epoch_samples or data.num_samples
    steps_per_epoch = max(1, epoch_samples // cfg.batch_size)
    shards = ShardStream(
        data.uri,
        epoch_samples=steps_per_epoch * cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world=world,
        max_tokens=data.max_tokens,
        shuffle_buffer=cfg.shuffle_buffer,
    )
    ds = StepStream(
        shards,
        batch=b,
        steps_per_epoch=steps_per_epoch,
        start=start,
        stop=cfg.max_steps,
        parts=max(1, cfg.num_workers),
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=cfg.num_workers, pin_memory=device.type == "cuda"
    )
    stats = data.stats.to(device)  # once, not per step
    return loader, lambda blocks: normalize_on_device(blocks, data.layout, stats, device)


def text_noise(
    pooled: Tensor, tokens: Tensor, scale: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """pooled (B, D), tokens (B, L, D) -> the same, each vector v moved by scale * |v| * e with
    e ~ N(0, I / D) (|e| ~ 1): a relative perturbation; zero vectors (padding) stay zero."""
    if scale == 0:
        return pooled, tokens
    d = pooled.shape[-1]

    def move(v: Tensor) -> Tensor:
        e = torch.randn(v.shape, generator=generator, device=generator.device)
        return v + scale * v.norm(dim=-1, keepdim=True) * e.to(v.device, v.dtype) / d**0.5

    return move(pooled), move(tokens)


def _add_image_loss(engine, loss, lam, image_loss, data, cfg, valid, g, device):
    """(x0 loss + lam * image MSE, the image MSE averaged over ranks): the generator's
    one-step output from pure noise (t = T-1, text kept) for cfg.image_loss_samples concepts."""
    idx = image_loss.pick(cfg.image_loss_samples, g)  # (K,)
    if data.alt is not None:
        pooled, tokens, mask = data.alt.pick(idx, g)
    else:
        pooled, tokens, mask = data.pooled[idx], data.tokens[idx], data.mask[idx]
    pooled, tokens = text_noise(pooled, tokens, cfg.text_noise, g)
    K = idx.shape[0]
    v = valid.to(torch.float32)
    x_t = torch.randn((K, *v.shape), generator=g).to(device) * v  # (K, N, S)
    t = torch.full((K,), NUM_TRAIN_TIMESTEPS - 1, dtype=torch.long, device=device)
    keep = torch.zeros(K, dtype=torch.bool, device=device)
    nb = {k: v.to(device) for k, v in data.model_kwargs(idx, cfg.neighbor_family_drop, g).items()}
    pred = engine(
        x_t, t, pooled.to(device), tokens.to(device), mask.to(device), drop_text=keep, **nb
    )
    mse = image_loss(pred * v, idx, g)
    return loss + lam * mse, _all_mean(mse.item(), device)


def train_generator(
    data_uri: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a BlockDiT on the data set at `data_uri`; export the EMA generator into `out_dir`.

    Every rank calls this (one process, or each torchrun worker). Returns a summary dict (same on
    every rank): steps, resumed_from, first_loss, final_loss, seconds, steps_per_s,
    samples_per_s, params, world_size, zero_stage, out.
    """
    # DeepSpeed's ZeRO-2/3 call torch's renamed collectives on every step
    warnings.filterwarnings(
        "ignore", r".*(reduce_scatter_tensor|all_gather_into_tensor)", FutureWarning
    )
    cfg = cfg or TrainConfig()
    if cfg.image_loss > 0 and cfg.base is None:
        raise TrainError(
            "generator.image_loss needs the base the data set was collected on: "
            "--set generator.base=RUN/base"
        )
    out = Path(out_dir)
    # TrainError on a missing / empty / foreign data set
    data = (
        open_stream_data(data_uri)
        if cfg.stream
        else load_train_data(
            data_uri,
            paraphrases=cfg.paraphrases,
            neighbors=cfg.neighbors,
            family=cfg.neighbor_family_drop > 0,
            pool=cfg.neighbor_pool,
            pair_features=cfg.pair_features,
        )
    )
    loss_weight = (
        load_loss_weights(data_uri, data.layout, data.stats)
        if cfg.loss_weight == "sensitivity"
        else None
    )  # (N, S) or None
    rank, world, device = init_distributed()
    import deepspeed  # after init_distributed chose the accelerator

    image_loss = None
    if cfg.image_loss > 0:
        from weightgen.train.imageloss import ImageLoss

        image_loss = ImageLoss(
            cfg.base, data, crops=cfg.image_loss_crops, per_call=cfg.image_loss_per_call,
            seed=cfg.seed, device=device, progress=progress and rank == 0,
        )  # fmt: skip

    # read before OUT is touched: a wrong path fails here
    init_src = load_init(cfg.init_from) if cfg.init_from is not None else None
    is_main = rank == 0
    start = _prepare_out(out, cfg, resume)
    dist.barrier()  # every rank has read OUT before rank 0 changes it
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / GENERATOR_JSON).unlink(missing_ok=True)  # the old export is stale from here on
        _write_json(out / "config.json", cfg.to_dict())
    bf16 = (
        cfg.bf16
        if cfg.bf16 is not None
        else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    )

    if cfg.threads is not None and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = block_dit(
        cfg.size,
        num_blocks=data.layout.num_blocks,
        block_size=data.layout.block_size,
        text_dim=data.text_dim,
        per_block=cfg.per_block,
        use_block_index=cfg.use_block_index,
        cond_drop_prob=cfg.cond_drop_prob,
        num_neighbors=cfg.neighbors,
        pair_dim=PAIR_DIM if cfg.pair_features else 0,
        **cfg.model_overrides,
    ).to(device)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if init_src is not None and start is None:
        init_weights(model, init_src, f"init_from {cfg.init_from}")
    n_params = count_params(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(cfg.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(cfg, world, bf16)
    )
    ema = EMA(engine.module, cfg.ema_decay, zero_stage=cfg.zero_stage, is_main=is_main)
    step = 0
    if start is not None:
        step = load_checkpoint(engine, ema, out / "checkpoints" / f"step-{start:07d}")
    resumed_from = step
    log_path = out / LOG_FILE
    if is_main:
        _trim_log(log_path, step)
    dist.barrier()

    scheduler = make_train_scheduler()
    valid = data.layout.valid_mask(device)  # (N, S)
    if loss_weight is not None:
        loss_weight = loss_weight.to(device)
    rank_seed = cfg.seed * world + rank
    loader, to_x0 = _batches(data, cfg, rank, world, rank_seed, step, device)
    tb = bar = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        tb = SummaryWriter(str(out / "tb"))
        bar = tqdm(
            total=cfg.max_steps, initial=step, desc="train", unit="step", disable=not progress
        )
    losses: deque[float] = deque(maxlen=20)
    first: list[float] = []
    t_start = t_log = time.perf_counter()
    steps_since_log = 0
    engine.train()
    # ---- the step loop -----------------------------------------------------------------------
    for x0, pooled, tokens, mask, *extra in loader:
        g = torch.Generator(device=device).manual_seed(rank_seed * 1_000_003 + step)
        pooled, tokens = text_noise(pooled.to(device), tokens.to(device), cfg.text_noise, g)
        # conditioning beyond text (neighbours, pair features; in-memory data only)
        kw = {k: v.to(device) for k, v in (extra[0] if extra else {}).items()}
        loss = diffusion_loss(
            engine, to_x0(x0), valid, pooled, tokens, mask.to(device),
            scheduler=scheduler, generator=g, cond_drop_prob=cfg.cond_drop_prob,
            last_t_frac=cfg.last_t_frac, weight=loss_weight, pair_drop_prob=cfg.pair_drop_prob,
            **kw,
        )  # fmt: skip
        img_val = None
        lam = cfg.image_loss_weight(step)
        if image_loss is not None and lam > 0:
            gi = torch.Generator().manual_seed((2 << 40) + rank_seed * 1_000_003 + step)
            total, img_val = _add_image_loss(
                engine, loss, lam, image_loss, data, cfg, valid, gi, device
            )
        else:
            total = loss
        engine.backward(total)
        engine.step()
        step += 1
        ema.update(step)
        loss_val = _all_mean(loss.item(), device)
        losses.append(loss_val)
        if len(first) < 5:
            first.append(loss_val)
        steps_since_log += 1
        if is_main:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}")
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            gn = _grad_norm(engine)
            now = time.perf_counter()
            sps = steps_since_log * cfg.batch_size / max(now - t_log, 1e-9)
            t_log, steps_since_log = now, 0
            if is_main:
                row = {"step": step, "loss": loss_val, "grad_norm": gn, "lr": engine.get_lr()[0],
                       "samples_per_s": sps}  # fmt: skip
                if img_val is not None:
                    row["image_mse"] = img_val
                for k in ("loss", "grad_norm", "lr", "samples_per_s", "image_mse"):
                    if k not in row:
                        continue
                    if row[k] is not None:
                        tb.add_scalar(f"train/{k}", row[k], step)
                with open(log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
            state = {"loss": loss_val, "config": cfg.to_dict(), "world_size": world}
            save_checkpoint(engine, ema, out, step, state, keep_last=cfg.keep_last, is_main=is_main)
    # -------------------------------------------------------------------------------------------
    seconds = time.perf_counter() - t_start
    done = step - resumed_from
    final_loss = sum(losses) / len(losses) if losses else None
    summary = {
        "out": str(out),
        "steps": step,
        "resumed_from": resumed_from,
        "first_loss": sum(first) / len(first) if first else None,
        "final_loss": final_loss,
        "seconds": seconds,
        "steps_per_s": done / seconds if done else None,
        "samples_per_s": done * cfg.batch_size / seconds if done else None,
        "params": n_params,
        "world_size": world,
        "zero_stage": cfg.zero_stage,
        "bf16": bf16,
        "num_samples": data.num_samples,
        "stream": cfg.stream,
        # this rank's peak GPU memory over the run (model states, activations, buffers); None on CPU
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }
    if final_loss is None and (out / LOG_FILE).is_file() and is_main:  # nothing left to train
        rows = [json.loads(ln) for ln in (out / LOG_FILE).read_text().splitlines() if ln.strip()]
        summary["final_loss"] = rows[-1]["loss"] if rows else None
    if is_main:
        bar.close()
        tb.close()
        meta = {
            "format": "weightgen-generator/1",
            "text_model": data.text_model,
            "max_text_tokens": data.max_tokens,
            "text_tokens": data.has_tokens,
            "dataset": data.uri,
            # operations its data set was derived without (weightgen derive --drop-family)
            "dropped_ops": list(data.manifest.extra.get("dropped_ops", [])),
            "layout_hash": data.layout.hash,
            "num_samples": data.num_samples,
            "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
            "beta_schedule": BETA_SCHEDULE,
            "prediction_type": "sample",
            "train_config": cfg.to_dict(),
            "summary": summary,
            "final_loss": summary["final_loss"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _export(out, engine, ema, data, cfg, meta)
    dist.barrier()
    return summary
