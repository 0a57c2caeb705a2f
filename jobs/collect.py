"""Entry point for `ray job submit`: the `weightgen collect` command, same flags, on the cluster.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python jobs/collect.py --base runs/demo/base --out s3://bucket/prefix [--config tiny]

Inside a Ray job RAY_ADDRESS is set; the driver then joins that cluster (`--address auto`) instead
of starting a local Ray. Re-submitting the same command resumes: finished jobs are skipped.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/collect.py` from the working dir: make it importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightgen.cli import main as weightgen_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("RAY_ADDRESS") and not any(a.split("=")[0] == "--address" for a in argv):
        argv += ["--address", "auto"]
    logging.getLogger("weightgen.collect").setLevel(
        logging.INFO
    )  # progress of the run in the job's log
    return weightgen_main(["collect", *argv])


if __name__ == "__main__":
    sys.exit(main())
