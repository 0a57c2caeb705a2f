"""Step-0 PSNR of a generator's one-step LoRAs against the nearest training LoRA, split into the 26
held-out concepts the benchmark fine-tunes (`--per-family 2`) and the other 31.

    python jobs/results/heldout-tiny-v7/step0_split.py RUN GENERATOR [GUIDANCE,...]

RUN holds base/ and dataset/ (the nearest LoRA comes from its data set). Prints mean / median and
the share of concepts where the generated LoRA beats the nearest one, per group and guidance
scale (default 1). Session 7: `runs/v7 runs/v7/gen-w` and `runs/v7 runs/v7/gen-w-x0`.
"""

import statistics
import sys
from pathlib import Path

import torch

from weightgen.diffusion import generate_lora
from weightgen.eval.benchmark import _Context, select_concepts
from weightgen.eval.newconcept import eval_pairs
from weightgen.gan import build_concept_model, evaluate, load_lora


def main(run: str, generator: str, scales: str = "1") -> None:
    torch.set_num_threads(1)
    ctx = _Context(Path(run), Path(generator))
    held = select_concepts("heldout", 10)  # all 57
    fine_tuned = {c.id for c in select_concepts("heldout", 2)}
    tb = ctx.enc.encode([c.text for c in held])
    g = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
    pairs = [eval_pairs(c, ctx.preset) for c in held]

    def psnr(i: int, lora: dict) -> float:
        load_lora(g, lora)
        return evaluate(g, *pairs[i], tb.tokens[i][None], tb.mask[i][None])[0]

    near = [psnr(i, ctx.baselines.nearest(tb.pooled[i])[0]) for i in range(len(held))]
    groups = {
        "fine-tuned 26": [i for i, c in enumerate(held) if c.id in fine_tuned],
        "other 31": [i for i, c in enumerate(held) if c.id not in fine_tuned],
        "all 57": list(range(len(held))),
    }
    for name, idx in groups.items():
        v = [near[i] for i in idx]
        print(f"nearest {name}: {statistics.mean(v):.2f} / {statistics.median(v):.2f}")
    for s in (float(x) for x in scales.split(",")):
        loras = generate_lora(ctx.bundle, [c.text for c in held], encoder=ctx.enc, guidance=s)
        gen = [psnr(i, lora) for i, lora in enumerate(loras)]
        for name, idx in groups.items():
            v = [gen[i] for i in idx]
            wins = sum(gen[i] > near[i] for i in idx) / len(idx)
            print(
                f"guidance {s:g} {name}: {statistics.mean(v):.2f} / {statistics.median(v):.2f}, "
                f"beats nearest {wins:.0%}"
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])
