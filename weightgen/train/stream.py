"""Streaming weight-set shards (local or s3://) for data sets too large to hold in memory.

The manifest's shards are split by node (rank r of W takes shards r, r+W, ...; every rank takes all
shards when there are fewer shards than ranks) and then by DataLoader worker the same way. Each
worker draws its shards with replacement (resampled shards: no end of data, no uneven last shard)
from an RNG seeded by (seed, rank, worker, epoch), shuffles samples in a buffer, and stops after its
share of `epoch_samples // world` samples: an epoch is a number of samples, not a pass over data.
Shards are read through weightgen.data (size + sha256 checked against the manifest) with
webdataset's pipeline stages. Raw blocks are yielded; `normalize_on_device` normalises a batch on
the training device (Triton kernel on GPU through weightgen.blocks.normalize's dispatch).

`StepStream` is what train_generator uses: it yields the micro-batch of each training step. The
rank's data is cut into P parts (P = max(1, DataLoader workers)); step t takes its batch from part
t % P, whose stream in epoch e = t // steps_per_epoch is ShardStream.part_stream(p, P, e). The batch
of step t is therefore a pure function of (seed, rank, world, P, batch, steps_per_epoch, shuffle
buffer, t), whichever worker builds it: a run resumed at step k rebuilds epoch k // steps_per_epoch
and reads (without training on) the batches of that epoch before k, then continues exactly where the
uninterrupted run was. The cost of a resume is reading at most one epoch of this rank's data.
"""

from __future__ import annotations

import copy
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

    def part_stream(self, part: int, parts: int, epoch: int) -> Iterator[tuple]:
        """Endless samples of part `part` of `parts` of this rank's shards in `epoch`."""
        shards = split(self.node_shards, part, parts)
        seed = _stream_seed(self.seed, self.rank, part, epoch)
        rng = random.Random(seed)
        pipe = wds.DataPipeline(
            lambda: self._shards(shards, rng),
            self._samples,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(seed)),
        )
        return iter(pipe)

    def _fresh_storage(self) -> None:
        """In a DataLoader worker: a storage object of its own (no S3 client shared over fork)."""
        if torch.utils.data.get_worker_info() is not None:
            self.storage = copy.copy(self.storage)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        self._fresh_storage()
        w, nw, _, count = self._worker()
        for i, item in enumerate(self.part_stream(w, nw, self.epoch)):
            if i >= count:
                break
            yield item


class StepStream(torch.utils.data.IterableDataset):
    """Items: the micro-batch of each step in [start, stop) on this rank, in step order:
    (blocks (b, N, S) f32 raw, pooled (b, Dt), tokens (b, L, Dt), mask (b, L) bool).

    Use with DataLoader(batch_size=None, num_workers=W), parts = max(1, W): the DataLoader asks its
    workers round-robin, so worker w builds steps start + w, start + w + W, ..., all of part
    (start + w) % W, and hands them back in step order.
    """

    def __init__(
        self,
        stream: ShardStream,
        *,
        batch: int,
        steps_per_epoch: int,
        start: int,
        stop: int,
        parts: int = 1,
    ):
        super().__init__()
        if batch < 1 or steps_per_epoch < 1 or parts < 1:
            raise ValueError("batch, steps_per_epoch and parts must be >= 1")
        self.stream, self.batch, self.steps_per_epoch = stream, batch, steps_per_epoch
        self.start, self.stop, self.parts = start, stop, parts

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def _steps_before(self, t: int) -> int:
        """Steps of t's part in t's epoch before t (what its part stream yielded before t)."""
        first = t // self.steps_per_epoch * self.steps_per_epoch
        part = t % self.parts
        first_of_part = first + (part - first) % self.parts  # first step of `part` in the epoch
        return max(0, (t - first_of_part) // self.parts)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        info = torch.utils.data.get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        if nw != self.parts:
            raise ValueError(f"StepStream of {self.parts} parts read by {nw} DataLoader workers")
        self.stream._fresh_storage()
        epoch, it = None, None
        for t in range(self.start + w, self.stop, nw):  # all of one part: (start + w) % nw
            if t // self.steps_per_epoch != epoch:
                epoch = t // self.steps_per_epoch
                it = self.stream.part_stream(t % nw, nw, epoch)
                for _ in range(self._steps_before(t) * self.batch):  # resume mid-epoch: replay
                    next(it)
            items = [next(it) for _ in range(self.batch)]
            yield tuple(torch.stack(x) for x in zip(*items))


def normalize_on_device(
    blocks: Tensor, layout: BlockLayout, stats: BlockStats, device: torch.device | str
) -> Tensor:
    """Raw blocks (B, N, S) -> normalised (B, N, S) f32 on `device`, padding exactly 0."""
    flat = blocks_to_flat(blocks.to(device, non_blocking=True), layout)  # (B, P)
    st = stats.to(device)
    return normalize(flat, layout, st.mean, st.std)  # (B, N, S)


__all__ = ["ShardStream", "StepStream", "normalize_on_device", "split"]
