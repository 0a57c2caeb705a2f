"""How well a base takes a LoRA from zero: the probe behind the 8,000-step base (session 7).

For each held-out concept, base + LoRA from zero (the benchmark's lora-zero) is fine-tuned for
STEPS steps at LR on the benchmark's evaluation schedule, and the first step at which it reaches
the concept's target (scratch's final PSNR in session 6's all-57 report, the same scratch runs
the benchmark makes) is read off, with the final PSNR.

    python jobs/results/heldout-tiny-v7/base_probe.py BASE_DIR ID,ID,... LR STEPS OUT.json

Session 7: `runs/v3/base` (1,200 steps) against `runs/probe/b8k/base` (`weightgen base --steps
8000`), invert-020,colormap-037,compose-086,emboss-022,compose-087,tone-045,tint-061,compose-083
(held-out concepts outside the 26 the benchmark fine-tunes), 0.003, 300: base_probe_1200.json and
base_probe_8000.json.
"""

import json
import sys
from pathlib import Path

import torch

from weightgen.concepts import get_concept
from weightgen.eval.benchmark import BenchConfig, concept_runs
from weightgen.gan import load_base
from weightgen.text import get_encoder

TARGETS = Path(__file__).resolve().parent.parent / "heldout-tiny-v6" / "all57" / "report.json"


def main(base_dir: str, ids: str, lr: str, steps: str, out: str) -> None:
    torch.set_num_threads(1)
    targets = json.loads(TARGETS.read_text())["per_concept"]
    base_state, preset = load_base(Path(base_dir))
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    cfg = BenchConfig(lora_steps=int(steps), lora_plateau=False)
    result = {}
    for cid in ids.split(","):
        tb = enc.encode([get_concept(cid).text])
        r = concept_runs(
            preset=preset, base_state=base_state, concept_id=cid, tokens=tb.tokens[0],
            mask=tb.mask[0], inits={"lora-zero": None}, lrs={"lora-zero": float(lr)}, cfg=cfg,
            preview=0,
        )  # fmt: skip
        curve = r["runs"]["lora-zero"]["curve"]
        target = targets[cid]["target_psnr"]
        result[cid] = {
            "hit": next((p["step"] for p in curve if p["psnr"] >= target), None),
            "final": curve[-1]["psnr"],
            "best": max(p["psnr"] for p in curve),
            "tgt": target,
            "s_per_step": curve[-1]["time_s"] / curve[-1]["step"],
        }
        print(cid, result[cid], flush=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:6])
