#!/usr/bin/env bash
# The GPU measurements of issue 27 as one prepared run (about 10 minutes on one H100/H200 at the
# default shapes): the block generator's bf16 MFU in the plain loop with and without
# torch.compile, DeepSpeed ZeRO 1/2/3 on one GPU (samples/s, peak memory, the ZeRO paper's
# model-state floor), and the Triton kernels' share of HBM peak. Results land in $OUT.
#
#   OUT=runs/bench/gpu cluster/launch/gpu_check.sh              # on the GPU machine
#   SIZE=tiny BLOCKS=8 SAMPLES=16 BATCH=4 STEPS=2 OUT=/tmp/g DS_ACCELERATOR=cpu \
#       cluster/launch/gpu_check.sh                              # the same script on CPU, tiny
#
# A machine that reaches no package registry installs what wheels/ carries first (built here with
# `pip wheel --no-deps deepspeed -w wheels/`), without dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-python}"
OUT="${OUT:-runs/bench/gpu}"
SIZE="${SIZE:-large}"      # the generator size (weightgen.diffusion.model.SIZES)
BLOCKS="${BLOCKS:-326}"    # the paper preset's 326 blocks of 256 values
SAMPLES="${SAMPLES:-256}"  # the synthetic data set for the ZeRO runs
BATCH="${BATCH:-64}"
STEPS="${STEPS:-10}"
mkdir -p "$OUT"
if compgen -G "wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --no-deps --no-index wheels/*.whl
fi
# weightgen and weightgen_kernels from this checkout, when the machine has not installed them
"$PY" -c "import weightgen, weightgen_kernels" 2> /dev/null \
  || "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee "$OUT/env.txt"
echo "== plain loop, bf16 MFU"
"$PY" cluster/launch/bench_mfu.py --size "$SIZE" --num-blocks "$BLOCKS" --batch "$BATCH" \
  --steps "$STEPS" --warmup 2 --out "$OUT/mfu.json"
echo "== plain loop, torch.compile"
"$PY" cluster/launch/bench_mfu.py --size "$SIZE" --num-blocks "$BLOCKS" --batch "$BATCH" \
  --steps "$STEPS" --warmup 2 --compile --out "$OUT/mfu-compile.json"
echo "== DeepSpeed ZeRO 1/2/3, one process"
"$PY" cluster/launch/bench_zero.py --synthetic "$SAMPLES" "$BLOCKS" --size "$SIZE" \
  --batch-size "$BATCH" --steps "$STEPS" --nproc 1 --no-plain --out "$OUT/zero.json"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== Triton kernels, bf16 and fp32"
  "$PY" -m weightgen_kernels.bench --concepts 64 1024 --out "$OUT/kernels"
fi
echo "== done: $OUT"
