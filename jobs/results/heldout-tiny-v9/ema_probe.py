"""Probe (session 9): would evaluating an exponential moving average (EMA) of the trained weights
smooth the GAN fine-tunes' curves and shorten time to target? One training run per (concept, method)
at lr 3e-3; the raw weights and EMAs at decay 0.9 and 0.97 (warm-up min(d, (1+t)/(10+t))) are all
evaluated at the benchmark's measurement steps, so the training trajectory is shared.

    python jobs/results/heldout-tiny-v9/ema_probe.py runs/v7 runs/v7/gen-w OUT.json PART NPARTS
    python jobs/results/heldout-tiny-v9/ema_summary.py 'OUT*.json'

Concepts: the first held-out concept of every family, split PART of NPARTS."""

import json
import sys
import time
from pathlib import Path

import torch
from _probe import probe_setup, probe_step

from weightgen.eval.benchmark import _Context, select_concepts
from weightgen.eval.metrics import eval_schedule
from weightgen.gan.lora import lora_trainable
from weightgen.gan.train import build_concept_model, evaluate

DECAYS = (0.0, 0.9, 0.97)


def run(ctx, c, tokens, mask, method, init, steps, lr, seed=0):
    pre = ctx.preset
    torch.manual_seed(seed)
    g = build_concept_model(
        "scratch" if method == "scratch" else "lora", pre.gan, pre.lora, ctx.base_state, init
    )
    params = list(g.parameters()) if method == "scratch" else lora_trainable(g)
    d, og, od, (xs, ys), (ex, ey), tok, msk = probe_setup(pre, params, lr, c, tokens, mask)
    emas = {k: [p.detach().clone() for p in params] for k in DECAYS if k > 0}
    curves = {k: [] for k in DECAYS}
    at = set(eval_schedule(steps, every=25))
    gen = torch.Generator().manual_seed(seed)

    def rec(step, el):
        curves[0.0].append({"step": step, "time_s": el, "psnr": evaluate(g, ex, ey, tok, msk)[0]})
        if emas:
            keep = [p.detach().clone() for p in params]
            for k, e in emas.items():
                with torch.no_grad():
                    for p, v in zip(params, e):
                        p.copy_(v)
                curves[k].append(
                    {"step": step, "time_s": el, "psnr": evaluate(g, ex, ey, tok, msk)[0]}
                )
            with torch.no_grad():
                for p, v in zip(params, keep):
                    p.copy_(v)

    rec(0, 0.0)
    el = 0.0
    g.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        probe_step(g, d, og, od, xs, ys, tok, msk, gen)
        with torch.no_grad():
            for k, e in emas.items():
                b = min(k, (1 + step) / (10 + step))
                torch._foreach_lerp_(e, [p.detach() for p in params], 1 - b)
        el += time.perf_counter() - t0
        if step in at:
            rec(step, el)
    return curves


def main(run_dir, gen_dir, out, part, nparts):
    torch.set_num_threads(1)
    ctx = _Context(Path(run_dir), Path(gen_dir))
    held = select_concepts("heldout", 1)[int(part) :: int(nparts)]
    from weightgen.diffusion import generate_lora

    tb = ctx.enc.encode([c.text for c in held])
    gens = generate_lora(ctx.bundle, [c.text for c in held], encoder=ctx.enc)
    res = {}
    for i, c in enumerate(held):
        near = ctx.baselines.nearest(tb.pooled[i])[0]
        r = {}
        for m, init, steps in (
            ("scratch", None, 1200),
            ("generated", gens[i], 400),
            ("lora-zero", None, 400),
            ("nearest", near, 400),
        ):
            t = time.time()
            r[m] = {
                str(k): v
                for k, v in run(ctx, c, tb.tokens[i], tb.mask[i], m, init, steps, 3e-3).items()
            }
            print(c.id, m, f"{time.time() - t:.0f}s", flush=True)
        res[c.id] = r
        Path(out).write_text(json.dumps(res))


if __name__ == "__main__":
    main(*sys.argv[1:])
