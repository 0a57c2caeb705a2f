"""Session 11 probe (run from the repository root with runs/v9 in place):
Per-tensor norms of tint-025's generated and nearest LoRAs and of the shared A init.
"""

from pathlib import Path

import torch

from weightgen.concepts import concepts
from weightgen.eval.benchmark import _a_init, _Context, find_nearest
from weightgen.eval.newconcept import timed_generate
from weightgen.gan import build_concept_model

torch.set_num_threads(1)
run = Path("runs/v9")
ctx = _Context(run, run / "gen")
held = list(concepts("heldout"))
texts = [c.text for c in held]
tb = ctx.enc.encode(texts)
near = find_nearest(ctx, held, tb)
gen, _ = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=1)
a0 = _a_init(build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state))
i = [c.id for c in held].index("tint-025")
g, n = gen[i], near["tint-025"]["lora"]
for k in sorted(g):
    z = a0.get(k, torch.zeros_like(g[k]))  # B starts at 0, A at the shared seeded init
    print(
        f"{k:32s} {tuple(g[k].shape)} |g|={g[k].norm():.3f} |n|={n[k].norm():.3f} "
        f"|init|={z.norm():.3f} |g-init|={(g[k] - z).norm():.3f} |n-init|={(n[k] - z).norm():.3f}"
    )
