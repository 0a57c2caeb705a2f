"""`weightgen sample`: a concept's text (and, for a generator trained with pair features, a folder of
its before/after pairs) in, its initial LoRA out: one `.safetensors` file for one text, or a folder
in weightgen.lorafiles' scheme (as `jobs/sample.py` writes it) for several."""

from __future__ import annotations

import time
from pathlib import Path

from weightgen.errors import WeightgenError
from weightgen.paths import check_dir_writable, check_parent_writable


def add_sample_parser(sub) -> None:
    """Register `sample` on the `weightgen` subparsers `sub`."""
    from weightgen.config import add_config_args

    pa = sub.add_parser("sample", help="text -> a new concept's initial LoRA (.safetensors)")
    pa.add_argument("--generator", required=True, help="generator folder (RUN/generator)")
    pa.add_argument("--text", action="append", help="concept text (repeatable: one batch)")
    pa.add_argument("--texts", help="file with one text per line")
    pa.add_argument("--out", required=True, help="FILE.safetensors (one text) or a folder")
    add_config_args(pa)
    pa.add_argument(
        "--init",
        choices=["generated", "nearest", "mean", "blended"],
        default="generated",
        help="generated (the generator's sample), nearest / mean (retrieval from the training "
        "LoRAs), blended (sample.blend x generated + the rest nearest)",
    )
    pa.add_argument(
        "--pairs",
        default=None,
        help="the concept's before/after pairs (A/ and B/, or AB images; one text only), read by "
        "a generator trained with pair features: the same 8 crops new-concept gives it",
    )
    pa.add_argument("--dataset", default=None, help="training data set for retrieval (default: "
                    "RUN/dataset beside the generator)")  # fmt: skip
    pa.add_argument("--base", default=None, help="base folder to check the layout against")
    pa.set_defaults(func=cmd_sample)


def read_texts(args) -> list[str]:
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


def check_base_fits(bundle, base_dir: Path) -> tuple[dict, object]:
    """The base's LoRA layout must be the generator's, or the sampled LoRA cannot load."""
    from weightgen.blocks import BlockLayout, LayoutMismatchError
    from weightgen.collect.job import lora_template
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


def folder_pairs(folder, text: str, preset) -> tuple:
    """(x, y) of the N_PAIRS crops a pair-conditioned generator reads for the concept of `folder`:
    the first of new-concept's training crops, so both give the generator the same pairs."""
    from weightgen.adapt import N_PAIRS, check_pairs
    from weightgen.concepts.sources import open_pair_folder

    source = open_pair_folder(folder, text)
    check_pairs(source)
    x, y = source.pairs(preset.concept.n_train_pairs, preset.gan.image_size, seed=0)
    return x[:N_PAIRS], y[:N_PAIRS]


def cmd_sample(args) -> int:
    from safetensors.torch import save_file

    from weightgen.config import load_config, save_resolved
    from weightgen.data import open_storage
    from weightgen.diffusion import load_generator
    from weightgen.initial import WeightBaselines, initial_loras
    from weightgen.lorafiles import sample_settings, write_index, write_loras

    recipe = load_config(args.config, args.set)
    sc = recipe.sample
    texts = read_texts(args)
    out = Path(args.out)
    one_file = len(texts) == 1 and out.suffix == ".safetensors"
    if args.pairs and not one_file:
        raise WeightgenError(
            "--pairs describes one concept: give one --text and a .safetensors --out"
        )
    bundle = load_generator(args.generator)
    base_dir = Path(args.base) if args.base else Path(args.generator).resolve().parent / "base"
    preset = check_base_fits(bundle, base_dir)[1] if args.base or base_dir.is_dir() else None
    pairs = None
    if args.pairs:
        if args.init not in ("generated", "blended"):
            raise WeightgenError(f"--pairs is read by the generator: --init {args.init} ignores it")
        if not bundle.model.config.pair_dim:
            raise WeightgenError(
                f"{args.generator} was trained without pair features: --pairs needs a generator "
                "trained with generator.pair_features = true"
            )
        if preset is None:
            raise WeightgenError(f"--pairs needs the base (its image size): none at {base_dir}")
        pairs = [folder_pairs(args.pairs, texts[0], preset)]
    baselines = None
    if args.init != "generated":  # retrieval: the training LoRAs beside the generator
        data = args.dataset or str(Path(args.generator).resolve().parent / "dataset")
        baselines = WeightBaselines.from_dataset(data)
    settings = sample_settings(str(args.generator), bundle.layout.hash, sc, args.init)
    t0 = time.perf_counter()
    if one_file:
        check_parent_writable(str(out))
        (lora,), (info,) = initial_loras(
            args.init, texts, sample=sc, bundle=bundle, baselines=baselines, pairs=pairs
        )
        meta = {**{k: str(v) for k, v in {**settings, **info}.items()}, "text": texts[0]}
        if args.pairs:
            meta["pairs"] = str(Path(args.pairs).resolve())
        tmp = out.with_name(f".{out.name}.tmp")
        save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp), metadata=meta)
        tmp.replace(out)
    else:
        check_dir_writable(out)
        storage = open_storage(str(out))
        items = list(enumerate(texts))
        write_loras(storage, items, settings, sample=sc, batch_size=64, init=args.init,
                    bundle=bundle, baselines=baselines)  # fmt: skip
        write_index(storage, texts, settings)
        save_resolved(recipe, out, source=args.config, overrides=args.set)
    seconds = time.perf_counter() - t0
    print(f"{args.init}: {len(texts)} LoRA(s) in {seconds:.2f} s ({sc.steps} step(s)); wrote {out}")
    return 0
