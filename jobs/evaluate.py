"""Entry point for `ray job submit`: the `weightgen evaluate` benchmark, one Ray task per concept.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python jobs/evaluate.py --generator runs/demo/generator --out runs/bench/heldout

Inside a Ray job RAY_ADDRESS is set and every fine-tune (one concept, all methods) and every
learning-rate sweep cell becomes a task on the cluster; outside one, `--workers N` starts a local Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate.py` from the working dir: make it importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightgen.cli import main as weightgen_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return weightgen_main(["evaluate", *argv])


if __name__ == "__main__":
    sys.exit(main())
