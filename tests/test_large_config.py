"""The `large` generator on the meta device (no memory): >= 300 M parameters, and the per-rank
parameter / gradient / optimiser bytes ZeRO plans for it on 8 and 64 ranks (ZeRO paper, bf16 Adam:
2Ψ + 2Ψ + 12Ψ, partitioned by stage)."""

import pytest
import torch

from weightgen.config import load_config
from weightgen.diffusion.model import block_dit, count_params
from weightgen.train import deepspeed_config
from weightgen.train.memory import zero_memory_plan

GiB = 2**30
NUM_BLOCKS = 360  # ~92 K LoRA values per concept (the paper preset) in blocks of 256


@pytest.fixture(scope="module")
def large_params() -> int:
    with torch.device("meta"):
        model = block_dit("large", num_blocks=NUM_BLOCKS, block_size=256)
    assert all(p.is_meta for p in model.parameters())
    return count_params(model)


def test_large_has_at_least_300m_params(large_params):
    assert 300e6 <= large_params <= 2e9, large_params  # 635.8 M at N=360, S=256


def test_large_supports_activation_checkpointing():
    with torch.device("meta"):
        model = block_dit("large", num_blocks=4, block_size=256, depth=2)
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing


@pytest.mark.parametrize("world", [8, 64])
def test_zero3_per_rank_plan(large_params, world):
    psi = large_params
    plan = zero_memory_plan(psi, world, stage=3)
    shard = -(-psi // world)
    assert plan == (2 * shard, 2 * shard, 12 * shard)
    assert plan.total == 16 * shard
    assert plan.total * world - 16 * psi < 16 * world  # only the padding of the last shard
    assert zero_memory_plan(psi, 1, stage=3).total == 16 * psi  # one rank: nothing partitioned
    if world == 64:  # ~635 M params: ~0.15 GiB per rank instead of ~9.5 GiB unpartitioned
        assert plan.total < 0.2 * GiB < 9 * GiB < zero_memory_plan(psi, world, stage=0).total


def test_plan_by_stage_and_precision():
    psi, n = 1_000_000, 8
    assert zero_memory_plan(psi, n, 0) == (2 * psi, 2 * psi, 12 * psi)
    assert zero_memory_plan(psi, n, 1) == (2 * psi, 2 * psi, 12 * psi // n)
    assert zero_memory_plan(psi, n, 2) == (2 * psi, 2 * psi // n, 12 * psi // n)
    assert zero_memory_plan(psi, n, 3) == (2 * psi // n, 2 * psi // n, 12 * psi // n)
    assert zero_memory_plan(psi, n, 3, bf16=False) == (4 * psi // n, 4 * psi // n, 8 * psi // n)
    with pytest.raises(ValueError):
        zero_memory_plan(psi, n, 4)
    with pytest.raises(ValueError):
        zero_memory_plan(psi, 0, 3)


def test_large_zero3_bf16_config():
    sets = ["size=large", "zero_stage=3", "bf16=true", "gradient_checkpointing=true"]
    cfg = load_config("paper", [f"generator.{s}" for s in sets]).generator
    assert cfg.size == "large" and cfg.bf16 and cfg.lr == 1e-4  # paper.toml's rate kept
    assert cfg.gradient_checkpointing
    ds = deepspeed_config(cfg, 64, bf16=True)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] * 64 == ds["train_batch_size"]
