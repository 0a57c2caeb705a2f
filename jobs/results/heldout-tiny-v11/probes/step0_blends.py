"""Session 11 probe (run from the repository root with runs/v9 in place):
Step 0 on the 57: generated, the 5 nearest, blends 0.25 / 0.5 / 0.75 of generated and nearest,
and the mean of the two nearest -> /tmp/probe/mix.json (read with aggregate.py).
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from common import top_nearest

from weightgen.concepts import concepts
from weightgen.eval.benchmark import _Context
from weightgen.eval.newconcept import eval_pairs, timed_generate, train_pairs
from weightgen.gan import build_concept_model, evaluate, load_lora

torch.set_num_threads(1)
Path("/tmp/probe").mkdir(exist_ok=True)
run = Path("runs/v9")
ctx = _Context(run, run / "gen")
held = list(concepts("heldout"))
texts = [c.text for c in held]
tb = ctx.enc.encode(texts)
sims = ctx.baselines.texts @ tb.pooled.numpy().T.astype(np.float32)
gen, _ = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=1)
gm = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
xt0, yt0 = train_pairs(held[0], ctx.preset)
print("train pairs", xt0.shape)
t0 = time.perf_counter()
load_lora(gm, gen[0])
evaluate(gm, xt0, yt0, tb.tokens[0][None], tb.mask[0][None])
print("score s", time.perf_counter() - t0)
res = {}
for i, c in enumerate(held):
    xe, ye = eval_pairs(c, ctx.preset)
    xt, yt = train_pairs(c, ctx.preset)
    nl = top_nearest(ctx.baselines, sims[:, i], 5)
    cand = {"g": gen[i], **{f"n{k}": nl[k] for k in range(5)}}
    for a in (0.25, 0.5, 0.75):
        cand[f"m{a}"] = {k: a * gen[i][k] + (1 - a) * nl[0][k] for k in gen[i]}
    cand["n01"] = {k: 0.5 * nl[0][k] + 0.5 * nl[1][k] for k in gen[i]}
    row = {}
    for name, lora in cand.items():
        load_lora(gm, lora)
        pe, _ = evaluate(gm, xe, ye, tb.tokens[i][None], tb.mask[i][None])
        pt, _ = evaluate(gm, xt, yt, tb.tokens[i][None], tb.mask[i][None])
        row[name] = (pe, pt)
    res[c.id] = row
json.dump(res, open("/tmp/probe/mix.json", "w"))
