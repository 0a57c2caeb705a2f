"""Reports: `report.json` (DESIGN.md contract), `report.md`, PNG curves and image grids.

Input: `step0[concept][method] = {"psnr", "ssim"}` for every evaluated concept, and
`runs[concept][method] = {"curve": [...], "offset_s": seconds added to the time (sampling)}` for
the fine-tuned ones. The target quality of a concept is scratch's final PSNR (the paper measures
time against pix2pix from scratch); without scratch runs, lora-zero's final PSNR.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from weightgen.eval.metrics import median, median_or_none, speedups, time_to_target  # noqa: E402

METHOD_ORDER = ("base", "scratch", "lora-zero", "generated", "nearest", "mean")
PAPER = {  # PAPER.md: FID and time to train a new concept
    "scratch": {"fid": 99.20, "time_s": 659.8},
    "lora-zero": {"fid": 93.86, "time_s": 198.5},
    "generated": {"fid": 89.93, "time_s": 43.3},
}


def summarise(step0: dict, runs: dict) -> dict:
    per_concept = {}
    for cid, methods in runs.items():
        ref = "scratch" if "scratch" in methods else "lora-zero"
        target = methods[ref]["curve"][-1]["psnr"]
        row = {"target_psnr": target, "target_method": ref, "methods": {}}
        for name, r in methods.items():
            t, s = time_to_target(r["curve"], target, offset_s=r.get("offset_s", 0.0))
            c = r["curve"]
            row["methods"][name] = {
                "psnr_step0": c[0]["psnr"],
                "ssim_step0": c[0]["ssim"],
                "psnr_final": c[-1]["psnr"],
                "ssim_final": c[-1]["ssim"],
                "time_to_target_s": t,
                "steps_to_target": s,
                "offset_s": r.get("offset_s", 0.0),
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

    def times(m):
        return [row["methods"].get(m, {}).get("time_to_target_s") for row in per_concept.values()]

    speed = {}
    if any("generated" in r["methods"] for r in per_concept.values()):
        sc = speedups(times("scratch"), times("generated"))
        lz = speedups(times("lora-zero"), times("generated"))
        speed = {
            "vs_scratch": sc["median"],
            "vs_lora_zero": lz["median"],
            "vs_scratch_spread": sc,
            "vs_lora_zero_spread": lz,
        }
    return {"methods": methods, "speedup": speed, "per_concept": per_concept, "step0": step0}


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

    m = summary["methods"]
    lines = [f"# {title}", ""]
    for k, v in (extra or {}).get("headline", {}).items():
        lines.append(f"- {k}: {v}")
    lines += [
        "",
        "## Methods (medians over concepts)",
        "",
        "| method | PSNR step 0 | SSIM step 0 | PSNR final | SSIM final | time to target (s) | steps to target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in m.items():
        lines.append(
            f"| {name} | {_fmt(e['psnr_step0'])} | {_fmt(e['ssim_step0'], 3)} | {_fmt(e.get('psnr_final'))} | "
            f"{_fmt(e.get('ssim_final'), 3)} | {_fmt(e.get('time_to_target_s'))} | {_fmt(e.get('steps_to_target'))} |"
        )
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
    lines += [
        "",
        "## Paper (Gong et al., ECCV 2024; FID, lower is better)",
        "",
        "| method | FID | time (s) |",
        "|---|---|---|",
    ]
    for name, p in PAPER.items():
        lines.append(f"| {name} | {p['fid']} | {p['time_s']} |")
    lines += ["", "![quality over time](curves.png)", "", "![quality at step 0](step0.png)", ""]
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
