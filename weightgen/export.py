"""A trained run as a shipped model: `weightgen export-model --run RUN --out models/NAME`.

The model folder holds what `new-concept`, `apply`, `sample` and the Python API read, and nothing
they do not (checkpoints, logs, the data set): base/ (generator.safetensors, metrics.json,
config.json) and generator/ (model/, layout.json, stats.safetensors, generator.json, config.json,
and neighbors.safetensors for a retrieval-augmented generator), plus `concepts.txt` (the training
concepts, one id per line) and `README.md`, the model card: the recipe, the training concepts by
family, the benchmark figures of the reports given, and the known limits. It is staged beside OUT
and moved in whole; over `max_mb` it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

from weightgen.errors import WeightgenError

BASE_FILES = ("generator.safetensors", "metrics.json", "config.json")
GENERATOR_FILES = (
    "layout.json", "stats.safetensors", "generator.json", "config.json", "neighbors.safetensors",
)  # fmt: skip
MAX_MB = 20.0


def _copy(src: Path, dst: Path, names: tuple[str, ...], required: tuple[str, ...]) -> None:
    dst.mkdir(parents=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
        elif name in required:
            raise WeightgenError(f"{src} has no {name}: not a complete {src.name}/ folder")


def _training_concepts(run: Path) -> list[dict]:
    """[{"id", "family", "text"}] of the samples of RUN/dataset, in data set order."""
    from weightgen.data import iter_samples, open_storage

    seen: dict[str, dict] = {}
    for s in iter_samples(open_storage(str(run / "dataset")), verify=False):
        cid = s.meta.get("concept_id") or s.key.rsplit("-s", 1)[0]
        seen.setdefault(cid, {"id": cid, "family": s.meta.get("family", ""),
                              "text": s.meta.get("text", "")})  # fmt: skip
    return list(seen.values())


def model_card(name: str, run: Path, concepts: list[dict], reports: list[Path]) -> str:
    """The model card (markdown): recipe, training concepts, benchmark figures, known limits."""
    from weightgen.eval.results import report_tables

    base_cfg = json.loads((run / "base" / "config.json").read_text())
    gen_meta = json.loads((run / "generator" / "generator.json").read_text())
    tc = gen_meta.get("train_config") or {}
    gan, base = base_cfg.get("gan", {}), base_cfg.get("base", {})
    fams = Counter(c["family"] for c in concepts)
    lines = [
        f"# weightgen model: {name}",
        "",
        "A base image-to-image GAN and a block diffusion generator that turns the text of an edit",
        "(and, when trained with pair features, a few example pairs) into the initial LoRA of that",
        "edit. Use it with `weightgen new-concept --model THIS`, `weightgen apply --model THIS` or",
        "`WeightGenerator.from_pretrained(THIS)` / `Base.from_pretrained(THIS)`.",
        "",
        "## Recipe",
        "",
        f"- recipe: `{base_cfg.get('name', '?')}` (full tree: base/config.json, generator/config.json)",
        f"- base GAN: {gan.get('image_size', '?')} px, {gan.get('channels', '?')} channels, "
        f"pre-trained {base.get('steps', '?')} steps; LoRA rank {base_cfg.get('lora', {}).get('rank', '?')}",
        f"- generator: size `{tc.get('size', '?')}`, {tc.get('max_steps', '?')} steps, loss weight "
        f"`{tc.get('loss_weight', '?')}`, image loss {tc.get('image_loss', 0)}, text noise "
        f"{tc.get('text_noise', 0)}, neighbours {tc.get('neighbors', 0)}, pair features "
        f"{tc.get('pair_features', False)}",
        f"- text model: `{gen_meta.get('text_model', '?')}`",
        "",
        "## Training concepts",
        "",
        f"{len(concepts)} concepts (`concepts.txt`): "
        + ", ".join(f"{f} {n}" for f, n in sorted(fams.items())),
        "",
        "## Benchmark",
    ]  # fmt: skip
    if reports:
        for rep in reports:
            r = json.loads(rep.read_text())
            split = (r.get("split") or {}).get("evaluated", "heldout")
            lines += report_tables(r, f"Split `{split}` ({rep.parent.name}/report.md)")
    else:
        lines += ["", "No benchmark report was given when this model was exported."]
    lines += [
        "",
        "## Known limits",
        "",
        f"- {gan.get('image_size', 64)} px: larger photos are edited in overlapping tiles "
        "(`apply --mode tile`) or resized (`--mode resize`).",
        "- Trained on procedural edits (tone, colour, filters, stylisations of the catalogue);",
        "  an edit far from them starts from a weaker LoRA and needs more fine-tuning.",
        "- A CPU-scale model: the `paper` recipe is the GPU scale.",
    ]
    return "\n".join(lines) + "\n"


def export_model(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    reports: list[str | os.PathLike] = (),
    max_mb: float = MAX_MB,
) -> dict:
    """RUN (base/, generator/, dataset/) -> the model folder OUT; returns {"out", "mb", "files"}."""
    from weightgen.paths import check_dir_writable

    run, out = Path(run), Path(out)
    for sub, marker in (("base", "generator.safetensors"), ("generator", "generator.json"),
                        ("dataset", "manifest.json")):  # fmt: skip
        if not (run / sub / marker).is_file():
            raise WeightgenError(f"no {sub}/{marker} in {run}: export a finished run")
    reps = [Path(r) / "report.json" if Path(r).is_dir() else Path(r) for r in reports]
    for r in reps:
        if not r.is_file():
            raise WeightgenError(f"no report at {r}")
    if out.exists() and not out.is_dir():
        raise WeightgenError(f"--out {out} is a file; give a folder")
    check_dir_writable(out.parent)
    stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _copy(run / "base", stage / "base", BASE_FILES, BASE_FILES[:1])
        _copy(run / "generator", stage / "generator", GENERATOR_FILES, GENERATOR_FILES[:3])
        shutil.copytree(run / "generator" / "model", stage / "generator" / "model")
        concepts = _training_concepts(run)
        (stage / "concepts.txt").write_text("".join(f"{c['id']}\n" for c in concepts))
        (stage / "README.md").write_text(model_card(out.name, run, concepts, reps))
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        mb = sum(p.stat().st_size for p in files) / 1e6
        if mb > max_mb:
            raise WeightgenError(f"the model would take {mb:.1f} MB, over the {max_mb:g} MB limit")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"out": str(out), "mb": mb, "files": [str(p.relative_to(stage)) for p in files]}


def add_command(sub) -> None:
    """`weightgen export-model` on the CLI's sub-parsers."""
    p = sub.add_parser("export-model", help="a finished run as a shipped model (models/NAME)")
    p.add_argument("--run", required=True, help="run folder with base/, generator/, dataset/")
    p.add_argument("--out", required=True, help="model folder, e.g. models/tiny")
    p.add_argument("--report", action="append", default=[], help="a benchmark report (folder or "
                   "report.json) whose figures go into the model card; repeatable")  # fmt: skip
    p.add_argument("--max-mb", type=float, default=MAX_MB, help="refuse a larger model")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    r = export_model(args.run, args.out, reports=args.report, max_mb=args.max_mb)
    print(f"wrote {r['out']}: {len(r['files'])} files, {r['mb']:.1f} MB")
    return 0
