"""Run only the benchmark's learning-rate sweep (training concepts) and print the table.

    python jobs/results/heldout-tiny-v8/sweep_only.py RUN GENERATOR OUT [STEPS] [WORKERS]

Writes OUT/sweep.json exactly as `weightgen evaluate --out OUT` would (same cache key), so a
following benchmark with the same generator and sweep settings reuses it.
"""

import json
import sys
from pathlib import Path

import torch

from weightgen.eval.benchmark import BenchConfig, _Context, sweep_learning_rates

run, gen, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 600
workers = int(sys.argv[5]) if len(sys.argv) > 5 else 1
torch.set_num_threads(1)
cfg = BenchConfig(
    per_family=10, lora_steps=600, lora_plateau=True, scratch_max_steps=1500,
    sweep_concepts=6, sweep_steps=steps, workers=workers,
)  # fmt: skip
res = sweep_learning_rates(_Context(run, gen), cfg, out)
print(json.dumps({"best": res["best"], "table": res["table"]}, indent=1))
