"""Session 11 probe (run from the repository root with runs/v9 in place):
Step 0 on the 57 held-out concepts: the generated LoRA at guidance 1 / 1.5 / 2 / 3 and seeds
1-3, and the three nearest training LoRAs; eval and training-pair PSNR -> /tmp/probe/cfg.json.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from common import top_nearest

from weightgen.concepts import concepts
from weightgen.eval.benchmark import _Context, find_nearest
from weightgen.eval.newconcept import eval_pairs, timed_generate, train_pairs
from weightgen.gan import build_concept_model, evaluate, load_lora

torch.set_num_threads(1)
Path("/tmp/probe").mkdir(exist_ok=True)
run = Path("runs/v9")
ctx = _Context(run, run / "gen")
held = list(concepts("heldout"))
print(len(held), "held-out")
texts = [c.text for c in held]
tb = ctx.enc.encode(texts)
near = find_nearest(ctx, held, tb)
# top-3 nearest
sims = ctx.baselines.texts @ tb.pooled.numpy().T.astype(np.float32)  # (M, C)
cands = {}
for g in (1.0, 1.5, 2.0, 3.0):
    t0 = time.perf_counter()
    loras, s = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=1, guidance=g)
    cands[f"g{g}"] = loras
    print("g", g, s / len(texts), flush=True)
for seed in (1, 2, 3):
    loras, s = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=1, seed=seed)
    cands[f"s{seed}"] = loras
gm = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
res = {}
for i, c in enumerate(held):
    xe, ye = eval_pairs(c, ctx.preset)
    xt, yt = train_pairs(c, ctx.preset)
    nl = top_nearest(ctx.baselines, sims[:, i], 3)
    row = {}
    allc = dict(cands)
    for k in range(3):
        allc[f"n{k}"] = None
    for name in allc:
        lora = allc[name][i] if name[0] != "n" else nl[int(name[1])]
        load_lora(gm, lora)
        pe, _ = evaluate(gm, xe, ye, tb.tokens[i][None], tb.mask[i][None])
        pt, _ = evaluate(gm, xt, yt, tb.tokens[i][None], tb.mask[i][None])
        row[name] = (pe, pt)
    res[c.id] = row
    print(c.id, " ".join(f"{k}:{v[0]:.1f}/{v[1]:.1f}" for k, v in row.items()), flush=True)
json.dump(res, open("/tmp/probe/cfg.json", "w"))
