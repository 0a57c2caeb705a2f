"""Per-rank bytes of model states under ZeRO, following the ZeRO paper's accounting.

Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"
(SC 2020), section 3.1 and figure 1: mixed-precision Adam on Ψ parameters holds 2Ψ bytes of
bf16/fp16 parameters, 2Ψ of bf16/fp16 gradients and KΨ = 12Ψ of fp32 optimiser states (master
weights, momentum, variance). Stage 1 partitions the optimiser states over the N ranks, stage 2
also the gradients, stage 3 also the parameters. Without bf16 (fp32 training) parameters and
gradients take 4Ψ each and Adam keeps 8Ψ (momentum, variance; no master copy).

Activations, temporary buffers and fragmentation are not counted: this is the model-state floor.
"""

from __future__ import annotations

from typing import NamedTuple


class ZeroMemoryPlan(NamedTuple):
    params: int  # bytes per rank
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer


def zero_memory_plan(num_params: int, world: int, stage: int, bf16: bool = True) -> ZeroMemoryPlan:
    """(Ψ, N ranks, ZeRO stage 0..3) -> bytes per rank of parameters, gradients, optimiser states.

    A partitioned state holds ceil(Ψ / N) elements per rank (the last partition padded).
    """
    if num_params < 0 or world < 1:
        raise ValueError(f"need num_params >= 0 and world >= 1, got {num_params}, {world}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    shard = -(-num_params // world)  # ceil(Ψ / N)
    p_bytes, g_bytes, o_bytes = (2, 2, 12) if bf16 else (4, 4, 8)
    return ZeroMemoryPlan(
        params=p_bytes * (shard if stage >= 3 else num_params),
        grads=g_bytes * (shard if stage >= 2 else num_params),
        optimizer=o_bytes * (shard if stage >= 1 else num_params),
    )


__all__ = ["ZeroMemoryPlan", "zero_memory_plan"]
