"""Give a sweep.json written before the per-method cache (one "key") its per-method keys.

    python jobs/results/heldout-tiny-v8/rekey_sweep.py RUN GENERATOR SWEEP_JSON STEPS

Used once: runs/v7/sweep600-w/sweep.json came from the log-step criterion's first version, which
already ran every LoRA method for every sweep step and scored it as the current code does; only
the cache layout changed. Refuses a file whose criterion or sweep settings differ.
"""

import json
import sys
from pathlib import Path

from weightgen.eval.benchmark import SWEEP_CRITERION, BenchConfig, _Context, sweep_keys

run, gen, path, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
old = json.loads(path.read_text())
cfg = BenchConfig(sweep_concepts=6, sweep_steps=steps)
k = old["key"]
assert k["criterion"] == SWEEP_CRITERION, "scored with another criterion: sweep again"
assert (k["sweep_lrs"], k["sweep_concepts"], k["sweep_steps"]) == (
    list(cfg.sweep_lrs),
    cfg.sweep_concepts,
    cfg.sweep_steps,
), "other sweep settings"
keys = sweep_keys(_Context(run, gen), cfg, list(old["table"]))
assert keys["generated"]["generator"] == k["generator"], "another generator"
new = {"keys": keys, **{f: old[f] for f in ("concepts", "best", "table")}}
path.write_text(json.dumps(new, indent=2) + "\n")
print("re-keyed", path)
