"""Ablations of the generator (issue 4), each a `weightgen evaluate --ablate NAME` row.

Sampling-time ablations reuse the trained generator:
  ddim10       10 DDIM steps instead of 1
  empty-text   the generator is given the empty text for every concept (its learned null text,
               the condition text dropout trains; guidance 0)
  refineS      the nearest training LoRA noised to strength S in (0, 1] and denoised in one step
               (e.g. refine0.3, refine0.7: the `refined` method at another strength)
  blendA       A * generated + (1 - A) * nearest, A in (0, 1) (e.g. blend0.25: the `blended`
               method at another weight)
  pick         of generated, nearest, their blends and generated's update enlarged
               (weightgen.initial.pick_candidates), the one with the lowest L1 on the concept's
               first 8 fine-tuning pairs (forward only; held-back pairs still judge it)
Training-time ablations train a variant generator (same steps and seed as the reference) under
OUT/ablations/NAME/, on a data set derived from the run's one when needed:
  block128, block512      the same LoRAs cut into blocks of 128 / 512 values
  per-block               every block denoised alone (no attention across blocks)
  no-index                no block-index embedding
  paraphrases             text augmentation: a random phrasing of each concept per step
  no-paraphrases          the stored text only (the reverse, for a reference trained with them)
  uniform-loss            every normalised LoRA value weighs the same in the x0 loss
  sensitivity-loss        values weighted by how much they move the image (the reverse)
  no-image-loss           the x0 loss alone (no pixel loss of base + the one-step LoRA)
  image-loss              the image loss added from step 0, weight 5 (the reverse)
  no-text-noise           no noise on the text embeddings while training
  text-noise              relative text-embedding noise 0.5 (the reverse)
  concepts50/100/200      the generator trained on the first K training concepts only
  pairs                   conditioned also on the description of 8 of each concept's pairs
                          (weightgen.diffusion.pairs; at evaluation its fine-tuning pairs)
  neighborsK              conditioned on the K training LoRAs nearest in text, starting from
                          their blend (weightgen.diffusion.neighbors); own family left out of
                          a quarter of the training retrievals (NEIGHBOR_FAMILY_DROP)
  neighborsK-poolM        the same, each training step's K drawn at random from the M nearest
  A+B                     training-time ablations on the run's data set together (e.g.
                          neighbors4+pairs)
Every row is measured the same way: quality at step 0 (PSNR / SSIM, medians over every held-out
concept) and how often it beats the nearest and the mean training LoRA.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from weightgen.errors import ConfigError

SAMPLING = {"ddim10": {"sample_steps": 10}, "empty-text": {"empty_text": True}}
TRAINING = {
    "block128": {"block_size": 128},
    "block512": {"block_size": 512},
    "per-block": {"train": {"per_block": True}},
    "no-index": {"train": {"use_block_index": False}},
    "paraphrases": {"train": {"paraphrases": True}},
    "no-paraphrases": {"train": {"paraphrases": False}},
    "uniform-loss": {"train": {"loss_weight": "uniform"}},
    "sensitivity-loss": {"train": {"loss_weight": "sensitivity"}},
    "no-image-loss": {"train": {"image_loss": 0.0}},
    "image-loss": {"train": {"image_loss": 5.0, "image_loss_start": 0, "image_loss_ramp": 0}},
    "no-text-noise": {"train": {"text_noise": 0.0}},
    "text-noise": {"train": {"text_noise": 0.5}},
    "pairs": {"train": {"pair_features": True}},
}
_CONCEPTS = re.compile(r"concepts(\d+)$")
_NEIGHBORS = re.compile(r"neighbors(\d+)(?:-pool(\d+))?$")
# a prior, not tuned: a concept of an unseen family retrieves only other families' LoRAs, and a
# quarter of the training retrievals are made to look like that
NEIGHBOR_FAMILY_DROP = 0.25
_REFINE = re.compile(r"refine(\d*\.?\d+)$")
_BLEND = re.compile(r"blend(\d*\.?\d+)$")
PICK = "pick"


def refine_strength(name: str) -> float | None:
    """S of a `refineS` ablation name (None: not one); S outside (0, 1] is an error."""
    m = _REFINE.fullmatch(name)
    if m is None:
        return None
    s = float(m.group(1))
    if not 0.0 < s <= 1.0:
        raise ConfigError(f"ablation {name!r}: the strength must be in (0, 1], got {s:g}")
    return s


def blend_weight(name: str) -> float | None:
    """A of a `blendA` ablation name (None: not one); A outside (0, 1) is an error."""
    m = _BLEND.fullmatch(name)
    if m is None:
        return None
    a = float(m.group(1))
    if not 0.0 < a < 1.0:
        raise ConfigError(f"ablation {name!r}: the blend weight must be in (0, 1), got {a:g}")
    return a


def _lever(name: str) -> dict | None:
    """The generator fields a training-time ablation on the run's own data set changes (None:
    not one): a TRAINING entry without a re-cut, or neighborsK."""
    nk = _NEIGHBORS.fullmatch(name)
    if nk:
        if int(nk.group(1)) < 1:
            raise ConfigError(f"ablation {name!r}: retrieve at least 1 neighbour")
        lever = {"neighbors": int(nk.group(1)), "neighbor_family_drop": NEIGHBOR_FAMILY_DROP}
        if nk.group(2) is not None:
            if int(nk.group(2)) < lever["neighbors"]:
                raise ConfigError(f"ablation {name!r}: the pool must hold at least K neighbours")
            lever["neighbor_pool"] = int(nk.group(2))
        return lever
    spec = TRAINING.get(name)
    return dict(spec["train"]) if spec and set(spec) == {"train"} else None


def combined(name: str) -> dict | None:
    """The merged generator fields of `A+B[+...]`, training-time ablations trained together (e.g.
    neighbors4+pairs); None for a name without '+'. A part that is not such an ablation, or two
    parts setting one field, is an error."""
    if "+" not in name:
        return None
    fields: dict = {}
    for part in name.split("+"):
        lever = _lever(part)
        if lever is None:
            raise ConfigError(
                f"ablation {name!r}: {part!r} cannot be combined (only training-time ablations on "
                "the run's data set: neighborsK and the generator settings)"
            )
        if set(lever) & set(fields):
            raise ConfigError(
                f"ablation {name!r}: two parts set {sorted(set(lever) & set(fields))}"
            )
        fields.update(lever)
    return fields


def check_ablations(names: list[str]) -> list[str]:
    for n in names:
        if combined(n) is not None:
            continue
        if _NEIGHBORS.fullmatch(n):
            _lever(n)  # K >= 1, pool >= K
        if (
            n not in SAMPLING
            and n != PICK
            and n not in TRAINING
            and not _CONCEPTS.fullmatch(n)
            and not _NEIGHBORS.fullmatch(n)
            and refine_strength(n) is None
            and blend_weight(n) is None
        ):
            known = ", ".join(
                [
                    *SAMPLING,
                    *TRAINING,
                    "conceptsK (e.g. concepts50)",
                    "neighborsK[-poolM] (e.g. neighbors4, neighbors4-pool12)",
                    "refineS (e.g. refine0.5)",
                    "blendA (e.g. blend0.25)",
                    PICK,
                    "A+B (training-time ablations together, e.g. neighbors4+pairs)",
                ]
            )
            raise ConfigError(f"unknown ablation {n!r}; choose from: {known}")
    return list(dict.fromkeys(names))


def derive_dataset(
    src: str,
    dst: str | Path,
    *,
    block_size: int | None = None,
    concepts: int | None = None,
    drop_ops: frozenset[str] = frozenset(),
) -> dict:
    """A copy of data set `src` at `dst`, with the LoRAs re-cut into `block_size` blocks and/or only
    `concepts` of its concepts (the first in catalogue order with families interleaved, so every
    family keeps its share), without the catalogue concepts whose program uses an operation of
    `drop_ops` (a family left out: Splits.family_ops). Stats are recomputed; manifest written
    last. Re-cutting is exact: from_blocks(old) == from_blocks(new) value for value."""
    from weightgen.blocks import BlockLayout
    from weightgen.blocks.stats import BlockStatsAccumulator
    from weightgen.concepts import concepts as list_concepts
    from weightgen.concepts import interleave
    from weightgen.data import ShardWriter, WeightSample, iter_samples, open_storage, read_manifest

    dst = Path(dst)
    m = read_manifest(src)
    st = open_storage(src)
    old = BlockLayout.from_dict(json.loads(st.read_bytes("layout.json")))
    new = BlockLayout(list(zip(old.names, old.shapes)), block_size or old.block_size)
    samples = list(iter_samples(src, expected_layout_hash=old.hash))
    known = {c.id: c for c in list_concepts()}
    if drop_ops:
        n = len(samples)
        samples = [
            s
            for s in samples
            if not (
                (c := known.get(s.meta.get("concept_id", s.key)))
                and any(e.op in drop_ops for e in c.program)
            )
        ]
        if len(samples) == n:
            raise ConfigError(f"{src} holds no concept using {', '.join(sorted(drop_ops))}")
    ids = list(dict.fromkeys(s.meta.get("concept_id", s.key) for s in samples))
    order = [c.id for c in interleave([known[i] for i in ids if i in known])]
    order += [i for i in ids if i not in known]  # other pair sources last
    seen = set(order[:concepts] if concepts is not None else order)
    keep = [s for s in samples if s.meta.get("concept_id", s.key) in seen]
    if not keep:
        raise ConfigError(f"derived data set from {src} would be empty")
    dst.mkdir(parents=True, exist_ok=True)
    acc = BlockStatsAccumulator(new)
    extra = dict(m.extra)
    extra.update(layout=new.to_dict(), derived_from=str(src), concepts=len(seen))
    if drop_ops or "dropped_ops" in extra:  # a derivation of a derivation keeps both
        extra["dropped_ops"] = sorted(set(extra.get("dropped_ops", ())) | set(drop_ops))
    extra.pop("members", None)
    with ShardWriter(
        str(dst),
        layout_hash=new.hash,
        block_size=new.block_size,
        num_blocks=new.num_blocks,
        extra=extra,
    ) as w:
        for s in keep:
            lora = old.from_blocks(torch.from_numpy(np.asarray(s.blocks, dtype=np.float32)))
            blocks = new.to_blocks(lora).numpy()
            acc.update(blocks)
            meta = dict(s.meta, layout_hash=new.hash)
            w.write(WeightSample(s.key, blocks, s.text, s.tokens, meta))
        (dst / "layout.json").write_text(json.dumps(new.to_dict()))
        _recut_sensitivity(st, old, new, dst)
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "stats.safetensors"
            acc.finalize().save(p)
            (dst / "stats.safetensors").write_bytes(p.read_bytes())
    return {"samples": len(keep), "concepts": len(seen), "block_size": new.block_size}


def _recut_sensitivity(st, old, new, dst: Path) -> None:
    """The source's sensitivity.safetensors (per LoRA value) cut into the new layout's blocks;
    nothing when the source has none. Measured on all the source's samples, it stays an estimate
    for a subset of them."""
    from safetensors.torch import save

    from weightgen.data.sensitivity import SENSITIVITY_FILE, read_sensitivity

    if not st.exists(SENSITIVITY_FILE):
        return
    raw, _ = read_sensitivity(st.read_bytes(SENSITIVITY_FILE))  # (N_old, S_old)
    blocks = new.to_blocks(old.from_blocks(raw)).contiguous()  # (N_new, S_new)
    meta = {"layout_hash": new.hash, "recut_from": old.hash}
    (dst / SENSITIVITY_FILE).write_bytes(bytes(save({"sensitivity": blocks}, metadata=meta)))


def ablation_generator(run: Path, out: Path, name: str, reference_meta: dict) -> Path:
    """The generator folder of a training-time ablation, trained when not already complete."""
    from weightgen.config import TrainConfig
    from weightgen.train import train_generator

    spec = dict(TRAINING.get(name, {}))
    k = _CONCEPTS.fullmatch(name)
    lever = combined(name) or _lever(name)  # None for a re-cut or a concept subset
    if lever is not None:
        spec["train"] = lever
    folder = out / "ablations" / name
    gen = folder / "generator"
    if (gen / "generator.json").is_file():
        return gen
    data = str(run / "dataset")
    if "block_size" in spec or k:
        data = str(folder / "dataset")
        if not (Path(data) / "manifest.json").is_file():
            derive_dataset(
                str(run / "dataset"),
                data,
                block_size=spec.get("block_size"),
                concepts=int(k.group(1)) if k else None,
            )
    cfg = dict(reference_meta.get("train_config") or {})
    cfg.update(spec.get("train", {}))
    if cfg.get("image_loss") and not cfg.get("base"):
        # the image loss runs the base the data set was collected on
        cfg["base"] = str(run / "base")
    if cfg.get("neighbors") or cfg.get("pair_features"):
        cfg["stream"] = False  # both read the in-memory data set
    if not torch.cuda.is_available():
        cfg["threads"] = 1
    train_generator(data, gen, TrainConfig.from_dict(cfg), resume=(gen / "checkpoints").is_dir())
    return gen


def step0_row(
    ctx,
    held,
    *,
    sample_steps: int = 1,
    refine: float | None = None,
    blend: float | None = None,
    pick: bool = False,
) -> dict:
    """Step-0 medians of `generated` for the context's generator, with win rates; with `refine`,
    of the nearest training LoRA refined from that strength instead; with `blend`, of
    blend * generated + (1 - blend) * nearest; with `pick`, of the candidate chosen on the
    concept's fine-tuning pairs (`picked` counts the choices)."""
    from weightgen.eval.context import find_nearest, step0_table
    from weightgen.eval.metrics import median

    texts = [c.text for c in held]
    tb = ctx.enc.encode(texts)
    near = find_nearest(ctx, held, tb)
    if refine is None:
        gen, per_s = ctx.generate(texts, sample_steps, concepts=held)
    else:
        inits = [near[c.id]["lora"] for c in held]
        gen, per_s = ctx.generate(texts, sample_steps, inits, refine, held)
    if blend is not None:
        from weightgen.initial import blend_loras

        gen = [blend_loras(gen[i], near[c.id]["lora"], blend) for i, c in enumerate(held)]
    picked: dict[str, int] = {}
    if pick:
        from weightgen.eval.inits import pick_starts

        chosen = pick_starts(ctx, held, gen, [near[c.id]["lora"] for c in held], tb, 8)
        gen = [lora for lora, _, _ in chosen]
        for _, used, _ in chosen:
            picked[used["picked"]] = picked.get(used["picked"], 0) + 1
        per_s += sum(s for _, _, s in chosen) / len(held)
    table = step0_table(ctx, held, gen, tb, near)
    g = [table[c]["generated"] for c in table]
    return {
        "psnr_step0": median(x["psnr"] for x in g),
        "ssim_step0": median(x["ssim"] for x in g),
        "beats_nearest": float(
            np.mean([table[c]["generated"]["psnr"] > table[c]["nearest"]["psnr"] for c in table])
        ),
        "beats_mean": float(
            np.mean([table[c]["generated"]["psnr"] > table[c]["mean"]["psnr"] for c in table])
        ),
        "seconds_per_concept": per_s,
        "concepts": len(table),
        **({"picked": dict(sorted(picked.items()))} if pick else {}),
    }


def add_derive_parser(sub) -> None:
    """`weightgen derive`: a data set derived from another (a family left out, a re-cut, a prefix)."""
    p = sub.add_parser(
        "derive",
        help="a copy of a data set without a training family (for family:NAME validation), "
        "re-cut into other blocks or cut to its first K concepts",
    )
    p.add_argument("--data", required=True, help="source data set (folder)")
    p.add_argument("--out", required=True, help="new data set folder")
    p.add_argument("--drop-family", default=None, metavar="NAME", help="leave out every concept "
                   "using an operation of this training family")  # fmt: skip
    p.add_argument(
        "--block-size", type=int, default=None, help="re-cut the LoRAs into these blocks"
    )
    p.add_argument("--concepts", type=int, default=None, help="only the first K concepts")
    p.set_defaults(func=_cmd_derive)


def _cmd_derive(args) -> int:
    from weightgen.concepts import Splits
    from weightgen.paths import check_dir_writable

    ops = Splits().family_ops(args.drop_family) if args.drop_family else frozenset()
    if (Path(args.out) / "manifest.json").exists():
        raise ConfigError(f"{args.out} already holds a data set; give a new --out")
    check_dir_writable(Path(args.out).parent)  # the folder itself only once there is a data set
    info = derive_dataset(args.data, args.out, block_size=args.block_size, concepts=args.concepts,
                          drop_ops=ops)  # fmt: skip
    print(f"wrote {args.out}: {info['samples']} samples of {info['concepts']} concepts, "
          f"blocks of {info['block_size']}")  # fmt: skip
    return 0
