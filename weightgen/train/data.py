"""Training data for the generator: a weight-set data set in memory, normalised, sharded per rank.

The data set folder (local path, file:// or s3://; see weightgen/collect/driver.py) must hold
manifest.json, layout.json (hash equal to the manifest's layout_hash) and stats.safetensors.
Samples are read and verified (size + sha256 of every shard) through weightgen.data, blocks
normalised with the data set's per-block statistics through weightgen.blocks.normalize.

Batch order is a pure function of (seed, rank, step): the rank's samples are visited in one
random permutation per epoch, permutation e seeded by (seed, rank, e); the batch of step t is
positions [t*b, (t+1)*b) of that endless stream. A resumed run therefore sees exactly the
batches an uninterrupted run would.

`open_stream_data` reads only the manifest, layout, statistics and one sample (for the text
widths): with TrainConfig.stream the samples come from weightgen.train.stream instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from weightgen.blocks import BlockLayout, BlockStats, blocks_to_flat, normalize
from weightgen.data import DatasetError, Manifest, iter_samples, open_storage, read_manifest
from weightgen.data.storage import KeyNotFoundError, StorageError
from weightgen.errors import WeightgenError

if TYPE_CHECKING:
    from weightgen.diffusion.neighbors import NeighborBank


class TrainError(WeightgenError):
    """A training input (data set, output folder, resume state) is missing or inconsistent."""


@dataclass
class Phrasings:
    """P phrasings per sample, padded by repeating the sample's own; `count` are real."""

    pooled: Tensor  # (M, P, Dt) float32
    tokens: Tensor  # (M, P, L, Dt) float32
    mask: Tensor  # (M, P, L) bool
    count: Tensor  # (M,) int64 in [1, P]

    def pick(self, idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One phrasing, uniform over the sample's real ones, for each of idx (b,)."""
        u = torch.rand(idx.shape[0], generator=generator)  # (b,)
        j = (u * self.count[idx]).long().clamp_max(self.pooled.shape[1] - 1)  # (b,)
        return self.pooled[idx, j], self.tokens[idx, j], self.mask[idx, j]


@dataclass
class TrainData:
    uri: str
    layout: BlockLayout
    stats: BlockStats
    manifest: Manifest
    keys: list[str]
    x0: Tensor  # (M, N, S) float32, normalised, padding 0
    pooled: Tensor  # (M, Dt) float32
    tokens: Tensor  # (M, L, Dt) float32, zero past the mask
    mask: Tensor  # (M, L) bool
    has_tokens: bool  # False: the data set had no token embeddings; tokens = pooled as one token
    text_model: str
    layout_bytes: bytes
    stats_bytes: bytes
    # paraphrase augmentation (load_train_data(paraphrases=True)): every phrasing of each sample's
    # concept; phrasing 0 is the stored embedding, the rest are meta.json's paraphrases encoded
    # here. None: train on the stored text only.
    alt: Phrasings | None = None
    # retrieval conditioning (load_train_data(neighbors=K)): one bank entry per training concept,
    # and every sample's K neighbours retrieved without its own concept ("concept") and, for
    # neighbor_family_drop, without its own family ("family"): (rows (M, K), similarities (M, K))
    bank: NeighborBank | None = None
    neighbor_index: dict[str, tuple[Tensor, Tensor]] | None = None
    # K neighbours the model takes; the index holds a pool of M >= K, drawn from every step
    neighbor_k: int = 0
    # conditioning on examples (load_train_data(pair_features=True)): each sample's description of
    # its concept's collection pairs (weightgen.diffusion.pairs), (M, PAIR_DIM)
    pair_feats: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return self.x0.shape[0]

    def neighbors(
        self, idx: Tensor, family_drop: float, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Samples idx (b,) -> their neighbours' blocks (b, K, N, S) and similarities (b, K);
        each sample's own family is left out with probability `family_drop`; from a pool of M > K,
        K of the M drawn at random, kept most similar first."""
        rows, sims = self.neighbor_index["concept"]
        rows, sims = rows[idx], sims[idx]
        if family_drop > 0:
            away = torch.rand(idx.shape[0], generator=generator) < family_drop  # (b,)
            frows, fsims = self.neighbor_index["family"]
            rows = torch.where(away[:, None], frows[idx], rows)
            sims = torch.where(away[:, None], fsims[idx], sims)
        k = self.neighbor_k or rows.shape[1]
        if rows.shape[1] > k:
            draw = torch.rand(rows.shape, generator=generator).argsort(dim=1)[:, :k]
            pos = draw.sort(dim=1).values  # (b, K): the pool is sorted by similarity
            rows, sims = rows.gather(1, pos), sims.gather(1, pos)
        return self.bank.gather(rows), sims

    def model_kwargs(self, idx: Tensor, family_drop: float, generator: torch.Generator) -> dict:
        """The conditioning beyond text for samples idx (b,): {neighbors, neighbor_sims} with a
        bank, {pair_features} with pair descriptions; {} for a text-only generator."""
        kw = {}
        if self.bank is not None:
            kw["neighbors"], kw["neighbor_sims"] = self.neighbors(idx, family_drop, generator)
        if self.pair_feats is not None:
            kw["pair_features"] = self.pair_feats[idx]
        return kw

    @property
    def text_dim(self) -> int:
        return self.pooled.shape[1]

    @property
    def max_tokens(self) -> int:
        return self.tokens.shape[1]


@dataclass
class StreamData:
    """A data set to stream: everything train_generator needs but the samples."""

    uri: str
    layout: BlockLayout
    stats: BlockStats
    manifest: Manifest
    text_dim: int
    max_tokens: int  # token rows per sample (1 when the data set has no token embeddings)
    has_tokens: bool
    text_model: str
    layout_bytes: bytes
    stats_bytes: bytes

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples


def _read_side(st, name: str, uri: str) -> bytes:
    try:
        return st.read_bytes(name)
    except KeyNotFoundError:
        raise TrainError(
            f"data set {uri} has no {name}; re-run `weightgen collect` to complete it"
        ) from None


def _open_dataset(uri: str):
    """(storage, manifest, layout, stats, layout bytes, stats bytes) of a data set, checked."""
    try:
        st = open_storage(uri)
        manifest = read_manifest(st)
    except (DatasetError, StorageError) as e:
        raise TrainError(f"cannot train on {uri}: {str(e).splitlines()[0]}") from None
    if manifest.num_samples == 0:
        raise TrainError(f"data set {uri} is empty (0 samples); collect some concepts first")
    layout_bytes = _read_side(st, "layout.json", uri)
    try:
        layout = BlockLayout.from_dict(json.loads(layout_bytes))
    except (ValueError, KeyError, TypeError) as e:
        raise TrainError(f"data set {uri}: bad layout.json ({str(e).splitlines()[0]})") from None
    if layout.hash != manifest.layout_hash:
        raise TrainError(
            f"data set {uri}: layout.json (hash {layout.hash[:12]}) does not match its manifest "
            f"(layout hash {manifest.layout_hash[:12]}): foreign or mixed files; re-collect"
        )
    stats_bytes = _read_side(st, "stats.safetensors", uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stats.safetensors"
        path.write_bytes(stats_bytes)
        try:
            stats = BlockStats.load(path, expected_layout_hash=layout.hash)
            stats.check(layout)
        except Exception as e:  # safetensors raises its own error types on a torn file
            raise TrainError(
                f"data set {uri}: stats.safetensors unusable ({str(e).splitlines()[0]})"
            ) from None
    return st, manifest, layout, stats, layout_bytes, stats_bytes


def _text_model(manifest: Manifest) -> str:
    return str(manifest.extra.get("text_model", "all-MiniLM-L6-v2"))


def open_stream_data(uri: str | os.PathLike) -> StreamData:
    """A data set's layout, statistics and text widths (from its first sample), for streaming."""
    uri = str(uri)
    st, manifest, layout, stats, layout_bytes, stats_bytes = _open_dataset(uri)
    try:
        first = next(
            iter_samples(st, expected_layout_hash=layout.hash, verify=True), None
        )  # reads the first shard only
    except DatasetError as e:
        raise TrainError(f"cannot train on {uri}: {str(e).splitlines()[0]}") from None
    if first is None:
        raise TrainError(f"data set {uri} is empty (0 samples); collect some concepts first")
    return StreamData(
        uri=st.uri,
        layout=layout,
        stats=stats,
        manifest=manifest,
        text_dim=int(first.text.shape[0]),
        max_tokens=1 if first.tokens is None else int(first.tokens.shape[0]),
        has_tokens=first.tokens is not None,
        text_model=_text_model(manifest),
        layout_bytes=layout_bytes,
        stats_bytes=stats_bytes,
    )


def _phrasings(
    metas: list[dict], pooled: Tensor, tok: Tensor, mask: Tensor, text_model: str, uri: str
) -> Phrasings:
    """Encode every sample's paraphrases (meta.json) with the data set's text encoder."""
    from weightgen.text import get_encoder

    extra = [[t for t in m.get("paraphrases") or [] if isinstance(t, str) and t] for m in metas]
    if not any(extra):
        raise TrainError(
            f"data set {uri}: no sample has paraphrases in its meta.json; train without them"
        )
    enc = get_encoder(text_model, tok.shape[1])
    flat = [t for ts in extra for t in ts]
    batch = enc.encode(flat)
    if batch.pooled.shape[1] != pooled.shape[1]:
        raise TrainError(
            f"data set {uri}: text width {pooled.shape[1]} but {text_model} gives "
            f"{batch.pooled.shape[1]}"
        )
    M, P = len(metas), 1 + max(len(ts) for ts in extra)
    out_p = pooled[:, None].repeat(1, P, 1)  # (M, P, Dt)
    out_t = tok[:, None].repeat(1, P, 1, 1)  # (M, P, L, Dt)
    out_m = mask[:, None].repeat(1, P, 1)  # (M, P, L)
    count = torch.ones(M, dtype=torch.long)
    k = 0
    for i, ts in enumerate(extra):
        for j in range(len(ts)):
            out_p[i, 1 + j] = batch.pooled[k]
            out_t[i, 1 + j] = batch.tokens[k]  # the encoder zeroes tokens past the mask
            out_m[i, 1 + j] = batch.mask[k]
            k += 1
        count[i] = 1 + len(ts)
    return Phrasings(out_p, out_t, out_m, count)


def load_train_data(
    uri: str | os.PathLike,
    *,
    paraphrases: bool = False,
    neighbors: int = 0,
    family: bool = False,
    pool: int = 0,
    pair_features: bool = False,
) -> TrainData:
    """Read, verify and normalise a whole (small) data set; TrainError with one line on bad input.
    `paraphrases`: also encode each concept's paraphrases (TrainData.alt) for text augmentation.
    `neighbors` K > 0: the retrieval bank and index (TrainData.bank, .neighbor_index); `family`:
    also the index without each sample's own family; `pool` M > K: the index holds the M nearest,
    K of which are drawn each step. `pair_features`: each sample's description of
    8 pairs of its catalogue concept (TrainData.pair_feats)."""
    uri = str(uri)
    st, manifest, layout, stats, layout_bytes, stats_bytes = _open_dataset(uri)

    keys, blocks, pooled, tokens, metas = [], [], [], [], []
    try:
        for s in iter_samples(st, expected_layout_hash=layout.hash, verify=True):
            keys.append(s.key)
            blocks.append(s.blocks)
            pooled.append(s.text.astype(np.float32, copy=False))
            tokens.append(None if s.tokens is None else s.tokens.astype(np.float32))
            metas.append(s.meta)
    except DatasetError as e:
        raise TrainError(f"cannot train on {uri}: {str(e).splitlines()[0]}") from None
    if not keys:
        raise TrainError(f"data set {uri} is empty (0 samples); collect some concepts first")
    if len({p.shape for p in pooled}) != 1:
        raise TrainError(f"data set {uri}: text embeddings of different sizes")

    pooled_t = torch.from_numpy(np.stack(pooled))  # (M, Dt)
    has_tokens = all(t is not None for t in tokens)
    if has_tokens:
        L = max(t.shape[0] for t in tokens)
        D = pooled_t.shape[1]
        tok = torch.zeros(len(keys), L, D)
        for i, t in enumerate(tokens):
            if t.shape[1] != D:
                raise TrainError(
                    f"data set {uri}: sample {keys[i]} token width {t.shape[1]} != {D}"
                )
            tok[i, : t.shape[0]] = torch.from_numpy(t)
        mask = (tok != 0).any(dim=-1)  # (M, L) tokens are stored zero past their mask
    else:
        tok, mask = pooled_t[:, None].clone(), torch.ones(len(keys), 1, dtype=torch.bool)

    flat = blocks_to_flat(torch.from_numpy(np.stack(blocks)), layout)  # (M, P)
    x0 = normalize(flat, layout, stats.mean, stats.std)  # (M, N, S)
    if paraphrases and not has_tokens:
        raise TrainError(
            f"data set {uri}: paraphrase augmentation needs the text token embeddings "
            "(collected with text_tokens on)"
        )
    alt = (
        _phrasings(metas, pooled_t, tok, mask, _text_model(manifest), uri) if paraphrases else None
    )
    bank = index = None
    if neighbors:
        from weightgen.diffusion.neighbors import NeighborBank

        ids = [m.get("concept_id") or k.rsplit("-s", 1)[0] for m, k in zip(metas, keys)]
        fams = [m.get("family") or c for m, c in zip(metas, ids)]  # no family: its own
        bank, own = NeighborBank.from_samples(x0, pooled_t, ids, fams)
        try:
            index = bank.training_index(own, max(neighbors, pool), family)
        except ValueError as e:
            raise TrainError(
                f"data set {uri} ({bank.size} concepts, {len(set(bank.families))} families): "
                f"cannot retrieve {max(neighbors, pool)} neighbours per sample: {e}"
            ) from None
    return TrainData(
        uri=st.uri,
        layout=layout,
        stats=stats,
        manifest=manifest,
        keys=keys,
        x0=x0.contiguous(),
        pooled=pooled_t,
        tokens=tok,
        mask=mask,
        has_tokens=has_tokens,
        text_model=_text_model(manifest),
        layout_bytes=layout_bytes,
        stats_bytes=stats_bytes,
        alt=alt,
        bank=bank,
        neighbor_index=index,
        neighbor_k=neighbors,
        pair_feats=_pair_feats(metas, keys, uri) if pair_features else None,
    )


PAIRS_PER_SAMPLE = 8


def _pair_feats(metas: list[dict], keys: list[str], uri: str) -> Tensor:
    """(M, PAIR_DIM): per sample, the description of PAIRS_PER_SAMPLE collection pairs of its
    catalogue concept, drawn with the sample's seed (the pairs its LoRA was trained on)."""
    from tqdm.auto import tqdm

    from weightgen.concepts import UnknownConceptError, get_concept, make_pairs
    from weightgen.diffusion.pairs import edit_features

    out = []
    for m, k in tqdm(list(zip(metas, keys)), desc="pair features", unit="sample", leave=False):
        try:
            concept = get_concept(m.get("concept_id") or k.rsplit("-s", 1)[0])
        except UnknownConceptError:
            raise TrainError(
                f"data set {uri}: sample {k} is not a catalogue concept; pair_features needs "
                "the pairs of every sample's concept"
            ) from None
        x, y = make_pairs(concept, PAIRS_PER_SAMPLE, size=64, seed=int(m.get("seed", 0)),
                          split="collect")  # fmt: skip
        out.append(edit_features(x, y))
    return torch.stack(out)


def load_loss_weights(uri: str | os.PathLike, layout: BlockLayout, stats: BlockStats) -> Tensor:
    """(N, S) x0-loss weights from the data set's sensitivity.safetensors (written by
    `weightgen sensitivity`): weightgen.data.sensitivity.loss_weights of it. TrainError when the
    file is missing or belongs to another layout."""
    from weightgen.data.sensitivity import SENSITIVITY_FILE, loss_weights, read_sensitivity

    uri = str(uri)
    try:
        raw = open_storage(uri).read_bytes(SENSITIVITY_FILE)
    except KeyNotFoundError:
        raise TrainError(
            f"data set {uri} has no {SENSITIVITY_FILE}: run `weightgen sensitivity --base BASE "
            f"--data {uri}` first, or train with --loss-weight uniform"
        ) from None
    sens, meta = read_sensitivity(raw)
    want = (layout.num_blocks, layout.block_size)
    if meta.get("layout_hash") != layout.hash or sens is None or tuple(sens.shape) != want:
        raise TrainError(
            f"data set {uri}: {SENSITIVITY_FILE} was measured for another layout; "
            "run `weightgen sensitivity` again"
        )
    try:
        return loss_weights(sens, stats.std, layout.valid_mask())
    except ValueError as e:
        raise TrainError(f"data set {uri}: {SENSITIVITY_FILE} unusable ({e})") from None


def rank_shard(num_samples: int, rank: int, world: int) -> Tensor:
    """(M_r,) int64: the samples rank `rank` trains on (every world-th, starting at rank)."""
    if num_samples < world:
        raise TrainError(f"{num_samples} samples cannot be split over {world} ranks")
    return torch.arange(rank, num_samples, world)


def batch_positions(n: int, batch: int, step: int, seed: int) -> Tensor:
    """(batch,) int64 in [0, n): the batch of `step` in the endless per-epoch-permuted stream."""
    start = step * batch
    out = []
    pos = start
    while pos < start + batch:
        epoch, off = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)  # (n,)
        take = min(n - off, start + batch - pos)
        out.append(perm[off : off + take])
        pos += take
    return torch.cat(out)


class StepBatches(torch.utils.data.Dataset):
    """Item i = the batch of step `start + i` on this rank: (x0, pooled, tokens, mask, kwargs),
    kwargs the conditioning beyond text (TrainData.model_kwargs: neighbours, pair features). With data.alt, each
    sample's phrasing is drawn from a generator seeded by (seed, step), so a resumed run sees the
    same texts (and neighbours) as an uninterrupted one."""

    def __init__(
        self,
        data: TrainData,
        rank: int,
        world: int,
        batch: int,
        seed: int,
        start: int,
        stop: int,
        family_drop: float = 0.0,
    ):
        self.data = data
        self.shard = rank_shard(data.num_samples, rank, world)  # (M_r,)
        self.batch, self.seed, self.start, self.stop = batch, seed, start, stop
        self.family_drop = family_drop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        idx = self.shard[batch_positions(len(self.shard), self.batch, self.start + i, self.seed)]
        d = self.data
        if d.alt is not None:
            g = torch.Generator().manual_seed((1 << 40) + self.seed * 1_000_003 + self.start + i)
            out = (d.x0[idx], *d.alt.pick(idx, g))
        else:
            out = d.x0[idx], d.pooled[idx], d.tokens[idx], d.mask[idx]
        g = torch.Generator().manual_seed((3 << 40) + self.seed * 1_000_003 + self.start + i)
        return (*out, d.model_kwargs(idx, self.family_drop, g))  # (b,N,S) (b,Dt) (b,L,Dt) (b,L) {}
