#!/usr/bin/env bash
# Multi-node torchrun with the c10d rendezvous: run the same command on every node.
#
#   NNODES=4 MASTER_ADDR=node0 cluster/launch/torchrun.sh jobs/train.py \
#       --config paper --set generator.size=large --set generator.zero_stage=3 \
#       --data s3://bucket/dataset --out /shared/runs/large
#   NNODES=2 MASTER_ADDR=node0 cluster/launch/torchrun.sh jobs/sample.py \
#       --generator /shared/runs/large --texts texts.txt --out s3://bucket/loras
#
# NNODES: node count (or MIN:MAX for elastic); MASTER_ADDR: a host every node reaches (the c10d
# store runs there); NPROC_PER_NODE: ranks per node (default: the GPU count); MAX_RESTARTS: how
# often torchrun restarts the whole worker group after a failure (train with --resume to continue
# from the last complete checkpoint; the training job adds --resume itself when RESUME=1).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"
: "${NNODES:?set NNODES (the node count)}"
: "${MASTER_ADDR:?set MASTER_ADDR (a host name every node can reach)}"
[ $# -ge 1 ] || { echo "usage: NNODES=N MASTER_ADDR=H $0 jobs/SCRIPT.py [flags]" >&2; exit 2; }
SCRIPT="$1"; shift
EXTRA=()
if [ "${RESUME:-0}" = 1 ] && [[ "$SCRIPT" == *train.py ]]; then EXTRA+=(--resume); fi

cd "$REPO"
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes "$NNODES" \
    --nproc_per_node "$NPROC_PER_NODE" \
    --rdzv_backend c10d \
    --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    --rdzv_id "$RDZV_ID" \
    --max_restarts "${MAX_RESTARTS:-0}" \
    "$SCRIPT" "$@" "${EXTRA[@]}"
