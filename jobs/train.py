"""Train the weight generator under torchrun (or in one process): the flags of `weightgen train`.

  python jobs/train.py --data runs/demo/dataset --out runs/demo/generator
  DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 jobs/train.py --data D --out R \
      --set generator.zero_stage=2
  torchrun --nnodes N --nproc_per_node G ... jobs/train.py --config paper --data s3://b/p --out R \
      --set generator.zero_stage=3

Everything is in `weightgen.train.command`; this file is the entry point torchrun and Slurm run.
"""

import sys

from weightgen.train.command import main

if __name__ == "__main__":
    sys.exit(main())
