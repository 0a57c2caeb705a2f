"""Session 11 probe (run from the repository root with runs/v9 in place):
400-step fine-tunes (lr 3e-3, no plateau stop) of generated, nearest and the blends 0.5 and
0.25 on the concepts given, steps to the v10 report's target -> /tmp/probe/ft-FIRST.json.
    python jobs/results/heldout-tiny-v11/probes/finetune_blends.py tint-025,invert-018,compose-081,vignette-021
"""

import json
import sys
from pathlib import Path

import torch

from weightgen.concepts import concepts
from weightgen.eval.benchmark import BenchConfig, _Context, concept_runs, find_nearest
from weightgen.eval.newconcept import timed_generate

ids = sys.argv[1].split(",")
torch.set_num_threads(1)
Path("/tmp/probe").mkdir(exist_ok=True)
run = Path("runs/v9")
ctx = _Context(run, run / "gen")
held = list(concepts("heldout"))
rep = json.load(open("jobs/results/heldout-tiny-v10/report.json"))
texts = [c.text for c in held]
tb = ctx.enc.encode(texts)
near = find_nearest(ctx, held, tb)
gen, _ = timed_generate(ctx.bundle, texts, encoder=ctx.enc, steps=1)
cfg = BenchConfig(lora_steps=400, lora_plateau=False, eval_every=25)
out = {}
for cid in ids:
    i = [c.id for c in held].index(cid)
    g, n = gen[i], near[cid]["lora"]
    inits = {
        "generated": g,
        "nearest": n,
        "mean": {k: 0.5 * g[k] + 0.5 * n[k] for k in g},
        "lora-zero": {k: 0.25 * g[k] + 0.75 * n[k] for k in g},
    }
    r = concept_runs(
        preset=ctx.preset,
        base_state=ctx.base_state,
        concept_id=cid,
        tokens=tb.tokens[i],
        mask=tb.mask[i],
        inits=inits,
        lrs={m: 3e-3 for m in inits},
        cfg=cfg,
    )
    tgt = rep["per_concept"][cid]["target_psnr"]
    row = {}
    for m, name in (
        ("generated", "g"),
        ("nearest", "n0"),
        ("mean", "m0.5"),
        ("lora-zero", "m0.25"),
    ):
        cur = r["runs"][m]["curve"]
        hit = next((p["step"] for p in cur if p["psnr"] >= tgt), None)
        row[name] = (cur[0]["psnr"], hit, cur[-1]["psnr"])
    out[cid] = row
    print(cid, tgt, row, flush=True)
json.dump(out, open(f"/tmp/probe/ft-{ids[0]}.json", "w"))
