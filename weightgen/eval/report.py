"""Reports: `report.json` (DESIGN.md contract), `report.md`, PNG curves and image grids.

Input: `step0[concept][method] = {"psnr", "ssim"}` for every evaluated concept, and
`runs[concept][method] = {"curve": [...], "offset_s": seconds added to the time (sampling)}` for
the fine-tuned ones. A run's final quality is the median of its last three measurements; the
target quality of a concept is scratch's final PSNR (the paper measures time against pix2pix from
scratch); without scratch runs, lora-zero's final PSNR.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from weightgen.eval.compare import TARGETS, table_markdown, target_table  # noqa: E402
from weightgen.eval.metrics import (  # noqa: E402
    COLLAPSE_DB,
    median,
    median_or_none,
    paired_difference,
    plateau_quality,
    speedups,
    time_to_target,
)

METHOD_ORDER = (
    "base",
    "scratch",
    "lora-zero",
    "generated",
    "blended",
    "picked",
    "refined",
    "nearest",
    "knn-blend",
    "best-by-loss",
    "nearest-noise",
    "random-text",
    "mean",
)
PAPER = {  # PAPER.md: FID and time to train a new concept
    "scratch": {"fid": 99.20, "time_s": 659.8},
    "lora-zero": {"fid": 93.86, "time_s": 198.5},
    "generated": {"fid": 89.93, "time_s": 43.3},
}


def summarise(step0: dict, runs: dict) -> dict:
    per_concept = {}
    for cid, methods in runs.items():
        ref = "scratch" if "scratch" in methods else "lora-zero"
        target = plateau_quality(methods[ref]["curve"])
        # the hard target: LoRA-from-zero's plateau (trained to it: BenchConfig.hard_max_steps)
        hard = plateau_quality(methods["lora-zero"]["curve"]) if "lora-zero" in methods else None
        row = {
            "target_psnr": target,
            "target_method": ref,
            "paper_target_psnr": target,
            "hard_target_psnr": hard,
            "methods": {},
        }
        for name, r in methods.items():
            off, c = r.get("offset_s", 0.0), r["curve"]
            t, s = time_to_target(c, target, offset_s=off)
            th, sh = (None, None) if hard is None else time_to_target(c, hard, offset_s=off)
            row["methods"][name] = {
                "psnr_step0": c[0]["psnr"],
                "ssim_step0": c[0]["ssim"],
                "psnr_final": plateau_quality(c),
                "ssim_final": plateau_quality(c, metric="ssim"),
                "time_to_target_s": t,
                "steps_to_target": s,
                "time_to_paper_s": t,
                "steps_to_paper": s,
                "time_to_hard_s": th,
                "steps_to_hard": sh,
                "offset_s": off,
            }
        per_concept[cid] = row

    methods = {}
    names = [
        m
        for m in METHOD_ORDER
        if any(m in v for v in step0.values()) or any(m in v for v in runs.values())
    ]
    for m in names:
        s0 = [v[m] for v in step0.values() if m in v]
        trained = [row["methods"][m] for row in per_concept.values() if m in row["methods"]]
        entry = {
            "psnr_step0": median(x["psnr"] for x in s0)
            if s0
            else median(x["psnr_step0"] for x in trained),
            "ssim_step0": median(x["ssim"] for x in s0)
            if s0
            else median(x["ssim_step0"] for x in trained),
            "concepts_step0": len(s0) or len(trained),
        }
        if trained:
            entry.update(
                psnr_final=median(x["psnr_final"] for x in trained),
                ssim_final=median(x["ssim_final"] for x in trained),
                time_to_target_s=median_or_none(x["time_to_target_s"] for x in trained),
                steps_to_target=median_or_none(x["steps_to_target"] for x in trained),
                reached_target=sum(x["time_to_target_s"] is not None for x in trained),
                concepts_trained=len(trained),
            )
        elif m == "base":  # no training: final = step 0; it reaches a target only if already there
            entry.update(
                psnr_final=entry["psnr_step0"],
                ssim_final=entry["ssim_step0"],
                time_to_target_s=None,
                steps_to_target=None,
            )
        else:
            entry.update(
                psnr_final=None, ssim_final=None, time_to_target_s=None, steps_to_target=None
            )
        methods[m] = entry

    # final PSNR paired by concept against each baseline that trained on the same concepts
    for m in names:
        for ref in ("scratch", "lora-zero"):
            both = [
                row["methods"]
                for row in per_concept.values()
                if m != ref and m in row["methods"] and ref in row["methods"]
            ]
            if both:
                methods[m].setdefault("final_vs", {})[ref] = paired_difference(
                    [r[ref]["psnr_final"] for r in both], [r[m]["psnr_final"] for r in both]
                )

    def times(m):
        return [row["methods"].get(m, {}).get("time_to_target_s") for row in per_concept.values()]

    speed = {}
    for fast, key in (
        ("generated", ""),
        ("refined", "refined_"),
        ("blended", "blended_"),
        ("picked", "picked_"),
    ):
        if any(fast in r["methods"] for r in per_concept.values()):
            sc = speedups(times("scratch"), times(fast))
            lz = speedups(times("lora-zero"), times(fast))
            speed |= {
                f"{key}vs_scratch": sc["median"],
                f"{key}vs_lora_zero": lz["median"],
                f"{key}vs_scratch_spread": sc,
                f"{key}vs_lora_zero_spread": lz,
            }
    trained = [m for m in names if any(m in r["methods"] for r in per_concept.values())]
    targets = {t: target_table(per_concept, trained, t) for t in TARGETS} if trained else {}
    return {
        "methods": methods,
        "speedup": speed,
        "targets": targets,
        "per_concept": per_concept,
        "step0": step0,
    }


def _fmt(v, nd=2):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def write_report(
    out: str | Path,
    summary: dict,
    *,
    runs: dict,
    extra: dict | None = None,
    title: str = "weightgen report",
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(summary)
    report.update(extra or {})
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    _plot_curves(out / "curves.png", runs)
    _plot_step0(out / "step0.png", summary["step0"])
    _plot_speedups(out / "speedup.png", summary)

    m = summary["methods"]
    lines = [f"# {title}", ""]
    for k, v in (extra or {}).get("headline", {}).items():
        lines.append(f"- {k}: {v}")
    for t, table in (summary.get("targets") or {}).items():
        lines += ["", f"## Time to the {t} target", ""] + table_markdown(table)
    lines += [
        "",
        "## Methods (medians over concepts)",
        "",
        "A concept where a method never reached the target counts as infinitely slow in the median "
        "time and steps (— when that is the median concept).",
        "",
        "| method | PSNR step 0 | SSIM step 0 | PSNR final | SSIM final | time to target (s) | steps to target | reached target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in m.items():
        reached = f"{e['reached_target']}/{e['concepts_trained']}" if "reached_target" in e else "—"
        lines.append(
            f"| {name} | {_fmt(e['psnr_step0'])} | {_fmt(e['ssim_step0'], 3)} | {_fmt(e.get('psnr_final'))} | "
            f"{_fmt(e.get('ssim_final'), 3)} | {_fmt(e.get('time_to_target_s'))} | {_fmt(e.get('steps_to_target'))} | {reached} |"
        )
    paired = {k: e["final_vs"] for k, e in m.items() if e.get("final_vs")}
    if paired:
        lines += [
            "",
            "Final PSNR paired by concept (median of the per-concept differences, dB, and the share "
            "of concepts where the method ends at least as high):",
            "",
            "| method | vs scratch | vs lora-zero |",
            "|---|---|---|",
        ]
        for name, fv in paired.items():
            cells = [
                f"{v['median_diff']:+.2f} ({100 * v['share_at_least']:.0f}%)" if v else "—"
                for v in (fv.get("scratch"), fv.get("lora-zero"))
            ]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    sp = summary.get("speedup") or {}
    if sp:
        sc, lz = sp["vs_scratch_spread"], sp["vs_lora_zero_spread"]
        lines += [
            "",
            "Speed-up of `generated` to the target quality (scratch's final PSNR per concept; the "
            "generated time includes sampling the LoRA), median over concepts, a concept where "
            "`generated` never reaches the target counting as 0×:",
            "",
            f"- vs scratch: **{_fmt(sp.get('vs_scratch'))}×** over the {sc['n']} of {sc['of']} "
            f"concepts where either reached the target (generated never did on {sc['fast_never']})",
            f"- vs lora-zero: **{_fmt(sp.get('vs_lora_zero'))}×** over the {lz['n']} of {lz['of']} "
            f"concepts where either reached it (generated never did on {lz['fast_never']}, "
            f"lora-zero on {lz['slow_never']})",
        ]
    for key, what in (
        ("refined", "the nearest training LoRA, one denoising step of the generator; its time "
         "includes that step"),
        ("blended", "the generated LoRA averaged with the nearest training LoRA; its time "
         "includes sampling"),
        ("picked", "of generated, nearest, their blends and generated's enlarged update, the one "
         "with the lowest loss on the concept's training pairs; its time includes sampling, "
         "retrieval and scoring"),
    ):  # fmt: skip
        if f"{key}_vs_scratch" in sp:
            sc, lz = sp[f"{key}_vs_scratch_spread"], sp[f"{key}_vs_lora_zero_spread"]
            lines += [
                "",
                f"The same for `{key}` ({what}): "
                f"**{_fmt(sp[f'{key}_vs_scratch'])}×** vs scratch (never reached on "
                f"{sc['fast_never']}), **{_fmt(sp[f'{key}_vs_lora_zero'])}×** vs lora-zero "
                f"(never reached on {lz['fast_never']})",
            ]
    lines += [
        "",
        "## Paper and ours side by side",
        "",
        "Paper: Gong et al., ECCV 2024, FID against the editor's outputs (lower is better), time to "
        "train a new concept. Ours: PSNR / SSIM (higher is better) against the exact edited "
        "targets, final quality and the median time and steps to reach scratch's final quality.",
        "",
        "| method | paper FID | paper time (s) | paper speed-up | our PSNR | our SSIM | our time (s) "
        "| our steps | our speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ours_speed = {
        "scratch": sp.get("vs_scratch") if sp else None,
        "lora-zero": sp.get("vs_lora_zero") if sp else None,
    }
    for name, p in PAPER.items():
        e = m.get(name, {})
        paper_speed = PAPER["scratch"]["time_s"] / p["time_s"] if name != "scratch" else 1.0
        mine = "1.00×" if name == "scratch" else "—"
        if name == "generated" and sp:
            mine = f"{_fmt(ours_speed['scratch'])}× vs scratch, {_fmt(ours_speed['lora-zero'])}× vs lora-zero"
        elif (
            name == "lora-zero"
            and e.get("time_to_target_s")
            and m.get("scratch", {}).get("time_to_target_s")
        ):
            mine = f"{m['scratch']['time_to_target_s'] / e['time_to_target_s']:.2f}×"
        lines.append(
            f"| {name} | {p['fid']} | {p['time_s']} | {paper_speed:.1f}× | {_fmt(e.get('psnr_final'))} "
            f"| {_fmt(e.get('ssim_final'), 3)} | {_fmt(e.get('time_to_target_s'))} "
            f"| {_fmt(e.get('steps_to_target'))} | {mine} |"
        )
    lines += ["", "![quality over time](curves.png)", "", "![quality at step 0](step0.png)", ""]
    if (out / "speedup.png").exists():
        lines += ["![speed-up per concept](speedup.png)", ""]
    if (out / "grid.png").exists():
        lines += ["![images](grid.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out


def _plot_curves(path: Path, runs: dict) -> None:
    if not runs:
        return
    n = len(runs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (cid, methods) in zip(axes.flat, runs.items()):
        for name in METHOD_ORDER:
            if name not in methods:
                continue
            c = methods[name]["curve"]
            off = methods[name].get("offset_s", 0.0)
            t = [max(p["time_s"] + off, 1e-2) for p in c]  # log axis: step 0 drawn at 10 ms
            ax.plot(t, [p["psnr"] for p in c], marker="o", ms=3, label=name)
        ax.set_xscale("log")
        ax.set_title(cid, fontsize=9)
        ax.set_xlabel("training time (s, log)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_speedups(path: Path, summary: dict) -> None:
    """Per-concept speed-up of `generated` (log axis); a concept it never reached is drawn at the
    bottom in red, one where the baseline never reached at the top in green."""
    rows = summary.get("per_concept") or {}
    if not any("generated" in r["methods"] for r in rows.values()):
        return
    cids = list(rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(cids) + 2), 3.6))
    for k, (ref, marker) in enumerate((("scratch", "o"), ("lora-zero", "s"))):
        xs, ys, colours = [], [], []
        for i, cid in enumerate(cids):
            ms = rows[cid]["methods"]
            if ref not in ms:
                continue
            a, b = ms[ref]["time_to_target_s"], ms["generated"]["time_to_target_s"]
            if a is None and b is None:
                continue
            if b is None:
                v, col = 0.1, "red"
            elif a is None:
                v, col = 1e4, "green"
            else:
                v, col = a / max(b, 1e-9), f"C{k}"
            xs.append(i + (k - 0.5) * 0.2)
            ys.append(v)
            colours.append(col)
        ax.scatter(xs, ys, marker=marker, c=colours, label=f"vs {ref}", s=22)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(cids)), cids, rotation=70, fontsize=6)
    ax.set_ylabel("speed-up to target (×, log)")
    ax.set_title("generated vs baselines per concept (red: generated never reached the target)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_step0(path: Path, step0: dict) -> None:
    if not step0:
        return
    names = [m for m in METHOD_ORDER if any(m in v for v in step0.values())]
    vals = [[v[m]["psnr"] for v in step0.values() if m in v] for m in names]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.4))
    ax.boxplot(vals, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("PSNR at step 0 (dB)")
    ax.set_title(f"quality before any training, {len(step0)} held-out concepts")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_image_grid(
    path: str | Path, rows: list[tuple[str, list[torch.Tensor]]], columns: list[str]
) -> None:
    """rows: (label, [image (3,H,W) in [0,1] per column]) -> one PNG with labelled columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, m = len(rows), len(columns)
    fig, axes = plt.subplots(n, m, figsize=(1.6 * m, 1.6 * n + 0.4), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j, img in enumerate(imgs):
            ax = axes[i][j]
            ax.imshow(np.clip(img.permute(1, 2, 0).numpy(), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_cell(c: dict | float | None) -> str:
    if c is None:
        return "—"
    if not isinstance(c, dict):  # a sweep.json written before the log-step score: final PSNR only
        return f"{c:.2f}"
    crash = f", {c['collapsed']} collapsed" if c["collapsed"] else ""
    return f"{c['score']:.2f} / {c['final']:.2f}{crash}"


def append_sections(md: Path, extra: dict) -> None:
    """Sweep, one-off cost and ablation tables after the main report."""
    lines = ["", "## Learning rates (sweep on training concepts, never held-out ones)", ""]
    table = extra["sweep"].get("table") or {}
    if table:
        rates = sorted({float(r) for v in table.values() for r in v})
        over = ", ".join(extra["sweep"].get("concepts", []))
        scored = any(isinstance(c, dict) for v in table.values() for c in v.values())
        lines += [
            (
                f"Over {over}, per rate: median PSNR over log(step) (the score) / median final "
                f"PSNR (dB), and runs that collapsed (ended > {COLLAPSE_DB:g} dB under their "
                "peak). The chosen rate has the best score among rates with no collapse."
                if scored  # a report from before the log-step score: final PSNR only
                else f"Median final PSNR (dB) over {over}:"
            ),
            "",
            "| method | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen |",
            "|---" * (len(rates) + 2) + "|",
        ]
        for m, v in table.items():
            cells = [_sweep_cell(v.get(repr(r))) for r in rates]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {extra['learning_rates'][m]:g} |")
    else:
        lines.append(
            "Rates: " + ", ".join(f"{k} {v:g}" for k, v in extra["learning_rates"].items())
        )
    cost, pay = extra["one_off_cost"], extra["payback"]
    lines += [
        "",
        "## One-off cost and payback",
        "",
        f"- base pre-training {cost['base_s'] or 0:.0f} s, collection {cost['collection_s']:.0f} s "
        f"(sum of {cost['collection_concepts']} concept trainings), "
        + (f"sensitivity {cost['sensitivity_s']:.0f} s, " if cost.get("sensitivity_s") else "")
        + "generator "
        f"{cost['generator_s'] or 0:.0f} s"
        + (
            f", the generator it was warm-started from ({cost['init_generator']}: its own base, "
            f"collection, sensitivity and training) {cost['init_generator_s']:.0f} s"
            if cost.get("init_generator")
            else ""
        )
        + f": **{cost['total_s']:.0f} s** in all",
    ]
    for ref, v in pay.items():
        per = v["seconds_saved_per_concept"]
        lines.append(
            f"- vs {ref}: "
            + (
                "no median time saved per concept, so never paid back"
                if v["payback_concepts"] is None
                else f"{per:.2f} s saved per new concept (median times to target), paid back "
                f"after **{v['payback_concepts']:.0f}** new concepts"
            )
        )
    rows = extra.get("ablations") or {}
    if rows:
        lines += [
            "",
            "## Ablations (generated LoRA at step 0, medians over every held-out concept)",
            "",
            "| ablation | PSNR step 0 | SSIM step 0 | beats nearest | beats mean | s per concept |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['psnr_step0']:.2f} | {r['ssim_step0']:.3f} | "
                f"{100 * r['beats_nearest']:.0f}% | {100 * r['beats_mean']:.0f}% | "
                f"{r['seconds_per_concept']:.4f} |"
            )
        for name, r in rows.items():
            if r.get("picked"):
                chosen = ", ".join(f"{k} {v}" for k, v in r["picked"].items())
                lines += ["", f"- {name} chose (concepts): {chosen}"]
    with md.open("a") as f:
        f.write("\n".join(lines) + "\n")
