"""Probe (session 9): is the plateau of base + LoRA fine-tunes on the slow held-out concepts limited
by the LoRA (rank 8 / 16 / 32, or LoRA also on the ResNet and MLP layers: "r8+res") or by the base
itself (every base weight trained: "full")? lora-zero init, 600 steps at lr 3e-3; the target is
scratch's final PSNR from session 8's all-57 report.

    python jobs/results/heldout-tiny-v9/capacity_probe.py runs/v7 OUT.json ID,ID,... r8,r16,r32,r8+res,full
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from _probe import probe_setup, probe_step

from weightgen.concepts import get_concept
from weightgen.eval.benchmark import _Context
from weightgen.eval.metrics import eval_schedule, plateau_quality
from weightgen.gan.lora import lora_trainable
from weightgen.gan.models import E2GANGenerator
from weightgen.gan.train import build_concept_model, evaluate


def run(ctx, c, tokens, mask, variant, steps=600, lr=3e-3, seed=0):
    pre = ctx.preset
    torch.manual_seed(seed)
    if variant == "full":
        g = E2GANGenerator(pre.gan)
        g.load_state_dict(ctx.base_state)
        params = list(g.parameters())
    else:
        rank, extra = {
            "r8": (8, ()),
            "r16": (16, ()),
            "r32": (32, ()),
            "r8+res": (8, ("conv1", "conv2", "mlp.0", "mlp.2")),
        }[variant]
        lc = dataclasses.replace(
            pre.lora, rank=rank, alpha=float(rank), targets=tuple(pre.lora.targets) + extra
        )
        g = build_concept_model("lora", pre.gan, lc, ctx.base_state)
        params = lora_trainable(g)
    d, og, od, (xs, ys), (ex, ey), tok, msk = probe_setup(pre, params, lr, c, tokens, mask)
    at = set(eval_schedule(steps, every=25))
    gen = torch.Generator().manual_seed(seed)
    curve = [{"step": 0, "time_s": 0.0, "psnr": evaluate(g, ex, ey, tok, msk)[0]}]
    el = 0.0
    g.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        probe_step(g, d, og, od, xs, ys, tok, msk, gen)
        el += time.perf_counter() - t0
        if step in at:
            curve.append({"step": step, "time_s": el, "psnr": evaluate(g, ex, ey, tok, msk)[0]})
    return curve


def main(run_dir, out, ids, variants):
    torch.set_num_threads(1)
    ctx = _Context(Path(run_dir), Path(run_dir) / "gen-w")
    rep = json.load(open(Path(run_dir) / "report-w8-all/report.json"))
    res = {}
    for cid in ids.split(","):
        c = get_concept(cid)
        tb = ctx.enc.encode([c.text])
        res[cid] = {"target": rep["per_concept"][cid]["target_psnr"]}
        for v in variants.split(","):
            time.time()
            cv = run(ctx, c, tb.tokens[0], tb.mask[0], v)
            res[cid][v] = cv
            print(
                cid,
                v,
                f"final {plateau_quality(cv):.2f} peak {max(p['psnr'] for p in cv):.2f} target {res[cid]['target']:.2f} s/step {cv[-1]['time_s'] / 600:.4f}",
                flush=True,
            )
            Path(out).write_text(json.dumps(res))


main(*sys.argv[1:])
