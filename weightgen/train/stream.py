"""Streaming weight-set shards (local or s3://) for data sets too large to hold in memory.

The manifest's shards are split by node (rank r of W takes shards r, r+W, ...; every rank takes all
shards when there are fewer shards than ranks) and then by DataLoader worker the same way. Each
worker draws its shards with replacement (resampled shards: no end of data, no uneven last shard)
from an RNG seeded by (seed, rank, worker, epoch), shuffles samples in a buffer, and stops after its
share of `epoch_samples // world` samples: an epoch is a number of samples, not a pass over data.
Shards are read through weightgen.data (size + sha256 checked against the manifest) with
webdataset's pipeline stages. Raw blocks are yielded; `normalize_on_device` normalises a batch on
the training device (Triton kernel on GPU through weightgen.blocks.normalize's dispatch).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from torch import Tensor

from weightgen.blocks import BlockLayout, BlockStats, blocks_to_flat, normalize
from weightgen.data import iter_samples, open_storage, read_manifest


def split(items: list, index: int, count: int) -> list:
    """items[index::count], or every item when there are fewer items than parts."""
    return list(items) if len(items) < count else list(items[index::count])


def _stream_seed(seed: int, rank: int, worker: int, epoch: int) -> int:
    return ((seed * 1_000_003 + rank) * 10_007 + worker) * 101 + epoch


class ShardStream(torch.utils.data.IterableDataset):
    """Items: (blocks (N, S) f32 raw, pooled (Dt,) f32, tokens (L, Dt) f32, mask (L,) bool)."""

    def __init__(
        self,
        uri: str | os.PathLike,
        *,
        epoch_samples: int,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        max_tokens: int = 16,
        shuffle_buffer: int = 64,
        verify: bool = True,
    ):
        super().__init__()
        if epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {epoch_samples}")
        self.storage = open_storage(uri)
        self.manifest = read_manifest(self.storage)
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
        self.epoch_samples, self.seed, self.max_tokens = epoch_samples, seed, max_tokens
        self.shuffle_buffer, self.verify, self.epoch = shuffle_buffer, verify, 0
        self.node_shards = split(self.manifest.shard_names, self.rank, self.world)
        if not self.node_shards:
            raise ValueError(f"data set {self.storage.uri} lists no shards")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_samples // self.world  # per rank

    def _worker(self) -> tuple[int, int, list[str], int]:
        info = torch.utils.data.get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        shards = split(self.node_shards, w, nw)
        per_rank = len(self)
        count = per_rank // nw + (1 if w < per_rank % nw else 0)  # this worker's share
        return w, nw, shards, count

    def _shards(self, shards: list[str], rng: random.Random) -> Iterator[dict]:
        while True:  # resampled: with replacement, endless
            yield {"url": rng.choice(shards)}

    def _samples(self, src: Iterator[dict]) -> Iterator[tuple]:
        L = self.max_tokens
        for shard in src:
            for s in iter_samples(self.storage, shards=[shard["url"]], verify=self.verify):
                pooled = torch.from_numpy(s.text.astype(np.float32))  # (Dt,)
                tokens = torch.zeros(L, pooled.shape[0])  # (L, Dt)
                if s.tokens is None:
                    tokens[0] = pooled
                else:
                    t = torch.from_numpy(s.tokens[:L].astype(np.float32))
                    tokens[: t.shape[0]] = t
                mask = (tokens != 0).any(dim=-1)  # (L,) tokens are stored zero past the mask
                yield torch.from_numpy(s.blocks), pooled, tokens, mask

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        w, _, shards, count = self._worker()
        seed = _stream_seed(self.seed, self.rank, w, self.epoch)
        rng = random.Random(seed)
        pipe = wds.DataPipeline(
            lambda: self._shards(shards, rng),
            self._samples,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(seed)),
        )
        for i, item in enumerate(pipe):
            if i >= count:
                break
            yield item


def normalize_on_device(
    blocks: Tensor, layout: BlockLayout, stats: BlockStats, device: torch.device | str
) -> Tensor:
    """Raw blocks (B, N, S) -> normalised (B, N, S) f32 on `device`, padding exactly 0."""
    flat = blocks_to_flat(blocks.to(device, non_blocking=True), layout)  # (B, P)
    st = stats.to(device)
    return normalize(flat, layout, st.mean, st.std)  # (B, N, S)


__all__ = ["ShardStream", "normalize_on_device", "split"]
