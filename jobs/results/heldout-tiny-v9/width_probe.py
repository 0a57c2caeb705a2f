"""Probe (session 9): lora-zero (B = 0) on a given base, 600 steps: final / peak PSNR, steps and
seconds to scratch's final PSNR (the target, from session 8's all-57 report, runs/v7/report-w8-all).

    python jobs/results/heldout-tiny-v9/width_probe.py runs/v7/base OUT.json ID,ID,... [LR]   # channels 8
    python jobs/results/heldout-tiny-v9/width_probe.py runs/v9/base OUT.json ID,ID,... [LR]   # channels 16
"""

import json
import sys
from pathlib import Path

import torch

from weightgen.concepts import get_concept
from weightgen.eval.metrics import eval_schedule, plateau_quality, time_to_target
from weightgen.eval.newconcept import eval_pairs, train_pairs
from weightgen.gan import load_base
from weightgen.gan.train import train_concept
from weightgen.text import get_encoder

torch.set_num_threads(1)
base_dir, out, ids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 3e-3
base_state, pre = load_base(Path(base_dir))
enc = get_encoder(pre.text_model, pre.gan.max_text_tokens)
rep = json.load(open("runs/v7/report-w8-all/report.json"))
res = {}
for cid in ids:
    c = get_concept(cid)
    tb = enc.encode([c.text])
    r = train_concept(
        method="lora",
        gan_cfg=pre.gan,
        lora_cfg=pre.lora,
        cfg=pre.concept,
        base_state=base_state,
        tokens=tb.tokens[0],
        mask=tb.mask[0],
        train_pairs=train_pairs(c, pre),
        eval_pairs=eval_pairs(c, pre),
        steps=600,
        lr=lr,
        eval_at=eval_schedule(600, every=25),
    )
    cv = [vars(p) for p in r.curve]
    tgt = rep["per_concept"][cid]["target_psnr"]
    t, s = time_to_target(cv, tgt)
    res[cid] = {"curve": cv, "target": tgt}
    print(
        f"{cid} final {plateau_quality(cv):.2f} peak {max(p['psnr'] for p in cv):.2f} target {tgt:.2f} steps {s} time {t} s/step {cv[-1]['time_s'] / 600:.4f}",
        flush=True,
    )
    Path(out).write_text(json.dumps(res))
