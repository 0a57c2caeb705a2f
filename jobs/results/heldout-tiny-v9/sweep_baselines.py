"""The benchmark's lr sweep for the four baselines only (scratch, lora-zero, nearest, mean) on runs/v9,
written to OUT/sweep.json under the same per-method keys `weightgen evaluate` uses, so the benchmark
later sweeps only `generated`. The generator passed is not used (generated's rate is fixed here).

    python jobs/results/heldout-tiny-v9/sweep_baselines.py RUN ANY_GENERATOR OUT
"""

import json
import sys
from pathlib import Path

import torch

from weightgen.eval.benchmark import BenchConfig, _Context, sweep_learning_rates

torch.set_num_threads(1)
run, gen, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = BenchConfig(
    per_family=2,
    lora_steps=600,
    lora_plateau=True,
    scratch_max_steps=1500,
    sweep_concepts=6,
    sweep_steps=600,
    workers=1,
    lrs={"generated": 3e-3},
)
res = sweep_learning_rates(_Context(run, gen), cfg, out)
print(json.dumps({"best": res["best"], "table": res["table"]}, indent=1))
