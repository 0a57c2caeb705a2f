"""Session 11 probe (run from the repository root with runs/v9 in place):
The trained/generated deviation-norm ratio per tensor, measured on the training concepts, and
step 0 on the 57 of the generated LoRA rescaled by it (and by its square root) and of 4 DDIM
steps -> /tmp/probe/ratio.json, /tmp/probe/scale.json.
"""

import json
from pathlib import Path

import numpy as np
import torch

from weightgen.concepts import concepts, get_concept
from weightgen.eval.benchmark import _a_init, _Context, find_nearest
from weightgen.eval.newconcept import eval_pairs, timed_generate
from weightgen.gan import build_concept_model, evaluate, load_lora

torch.set_num_threads(1)
Path("/tmp/probe").mkdir(exist_ok=True)
run = Path("runs/v9")
ctx = _Context(run, run / "gen")
gm = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
a0 = _a_init(gm)
B = ctx.baselines
# one sample per training concept
seen, idx = set(), []
for j, cid in enumerate(B.concept_ids):
    if cid not in seen:
        seen.add(cid)
        idx.append(j)
tr_texts = [get_concept(B.concept_ids[j]).text for j in idx]
tr_gen, _ = timed_generate(ctx.bundle, tr_texts, encoder=ctx.enc, steps=1)
ratio = {}
for k in tr_gen[0]:
    z = a0.get(k, torch.zeros_like(tr_gen[0][k]))
    t = [(B.layout.from_blocks(torch.from_numpy(B.blocks[j]))[k] - z).norm().item() for j in idx]
    g = [(x[k] - z).norm().item() for x in tr_gen]
    ratio[k] = float(np.median(np.array(t) / np.array(g)))
print(json.dumps({k: round(v, 2) for k, v in ratio.items()}))
json.dump(ratio, open("/tmp/probe/ratio.json", "w"))
held = list(concepts("heldout"))
texts = [c.text for c in held]
tb = ctx.enc.encode(texts)
near = find_nearest(ctx, held, tb)
gen, _ = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=1)
d4, _ = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=4)


def scaled(g, s):
    out = {}
    for k in g:
        z = a0.get(k, torch.zeros_like(g[k]))
        out[k] = z + (g[k] - z) * (ratio[k] ** s)
    return out


res = {}
for i, c in enumerate(held):
    xe, ye = eval_pairs(c, ctx.preset)
    cand = {
        "g": gen[i],
        "n0": near[c.id]["lora"],
        "d4": d4[i],
        "gs1": scaled(gen[i], 1.0),
        "gs.5": scaled(gen[i], 0.5),
    }
    row = {}
    for name, lora in cand.items():
        load_lora(gm, lora)
        row[name] = (evaluate(gm, xe, ye, tb.tokens[i][None], tb.mask[i][None])[0], 0.0)
    res[c.id] = row
json.dump(res, open("/tmp/probe/scale.json", "w"))
