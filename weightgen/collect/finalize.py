"""The finaliser: every done job of the ledger merged into packed shards, per-block statistics,
rejected.json and, last, manifest.json (layout of the dataset root: `weightgen.collect.driver`)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from weightgen.blocks import BlockLayout, BlockStatsAccumulator
from weightgen.collect.ledger import DONE, FAILED, REJECTED, Ledger, read_records, rejection
from weightgen.data import (
    MANIFEST,
    DatasetError,
    KeyNotFoundError,
    Manifest,
    ShardInfo,
    Storage,
    open_storage,
)
from weightgen.errors import WeightgenError

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
STATS = "stats.safetensors"
READ_THREADS = 8  # shards fetched concurrently (S3 latency), consumed in order


class CollectError(WeightgenError):
    pass


def content_sha(*parts) -> str:
    """sha256 hex of JSON-able `parts` (keys sorted; other values by repr): content ids."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def _tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]


def _blocks_of(data: bytes, layout: BlockLayout) -> dict[str, np.ndarray]:
    """{key: (N, S) blocks} of a shard's samples; ValueError when unreadable or off-layout."""
    out = {}
    try:
        for m, raw in _tar_members(data):
            key, _, ext = m.name.partition(".")
            if ext == "blocks.npy":
                out[key] = np.load(io.BytesIO(raw), allow_pickle=False)
    except (tarfile.TarError, ValueError, OSError, EOFError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    for b in out.values():
        if b.shape != (layout.num_blocks, layout.block_size) or b.dtype != np.float32:
            raise ValueError(f"blocks {b.dtype} {b.shape} do not fit the layout")
    return out


def _check(data: bytes | None, nbytes: int, sha256: str, against: str) -> None:
    if data is None:
        raise ValueError(f"missing, though {against} lists it")
    if len(data) != nbytes:
        raise ValueError(f"{len(data)} bytes, {against} says {nbytes} (truncated?)")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"sha256 differs from {against} (corrupt or replaced)")


def _fetch(storage: Storage, names: list[str]) -> Iterator[bytes | None]:
    """Contents of ``names`` (None when missing), in order, READ_THREADS reads ahead."""

    def get(name: str) -> bytes | None:
        try:
            return storage.read_bytes(name)
        except KeyNotFoundError:
            return None

    with ThreadPoolExecutor(READ_THREADS) as ex:
        window = 4 * READ_THREADS
        for i in range(0, len(names), window):
            yield from ex.map(get, names[i : i + window])


def _pack(parts: list[bytes]) -> bytes:
    """One tar of the members of ``parts``, headers kept (fixed mtime): same parts, same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as out:
        for data in parts:
            for m, raw in _tar_members(data):
                out.addfile(m, io.BytesIO(raw))
    return buf.getvalue()


def _pack_name(ids: list[str]) -> str:
    return f"shard-{content_sha(ids)[:16]}.tar"


def finalize(
    out: str | os.PathLike | Storage, *, maxcount: int | None = None, progress: bool = False
) -> Manifest:
    """Merge every done job of the ledger into shards of ``maxcount`` samples (default: the
    preset's ``shard_maxcount``), stats.safetensors, rejected.json and, last, manifest.json.

    Full shards of the previous manifest are kept (checked and read once for the statistics); the
    other done jobs are packed, in key order, from their per-job shards into new shards named by
    their members' ids (the same members give the same name and bytes, so a repeated or concurrent
    finalise writes the same objects). Nothing happens when the manifest already lists exactly the
    done jobs. A per-job shard that is missing or differs from its ledger record is recorded as
    failed (a re-run redoes it) and raises DatasetError naming it; no manifest is written then."""
    storage = open_storage(out)
    ledger = Ledger(storage)
    state = ledger.scan()
    done = {i for i, s in state.items() if s == DONE}
    try:
        old = Manifest.from_json(storage.read_bytes(MANIFEST))
    except (KeyNotFoundError, ValueError):
        old = None
    old_members: dict[str, list[str]] = dict(old.extra.get("members") or {}) if old else {}
    listed = [i for ids in old_members.values() for i in ids]
    if old and set(listed) == done and len(listed) == len(done) and storage.exists(STATS):
        return old
    if not done:
        raise CollectError(
            f"no job has passed vetting at {storage.uri} ({len(state)} recorded); see "
            f"{storage.join('ledger/')} for the reasons"
        )
    layout = BlockLayout.from_dict(json.loads(storage.read_bytes("layout.json")))
    ident = json.loads(storage.read_bytes(DATASET_JSON))
    if maxcount is None:
        preset = json.loads(storage.read_bytes("config.json"))
        maxcount = int(preset.get("collect", {}).get("shard_maxcount", 64))
    recs = {r["id"]: r for r in read_records(ledger, [(i, DONE) for i in sorted(done)])}
    stats = BlockStatsAccumulator(layout)
    shards: list[ShardInfo] = []
    members: dict[str, list[str]] = {}
    bar = tqdm(total=len(recs), desc="finalise", unit="job", disable=not progress)

    # 1. full, intact shards of the previous manifest stay as they are
    keep = [
        s
        for s in (old.shards if old else [])
        if len(old_members.get(s.name, ())) == maxcount == s.samples
        and all(i in recs for i in old_members[s.name])
    ]
    for info, data in zip(keep, _fetch(storage, [s.name for s in keep])):
        try:
            _check(data, info.bytes, info.sha256, "the manifest")
            blocks = _blocks_of(data, layout)
            if len(blocks) != info.samples:
                raise ValueError(f"{len(blocks)} samples, the manifest says {info.samples}")
        except ValueError as e:  # rebuilt below from its members' own shards
            log.warning("shard %s: %s; rebuilding it", storage.join(info.name), e)
            continue
        for b in blocks.values():
            stats.update(b)
        shards.append(info)
        members[info.name] = old_members[info.name]
        bar.update(info.samples)

    # 2. the other done jobs, packed from their per-job shards
    packed = {i for ids in members.values() for i in ids}
    pool = sorted(
        (r for i, r in recs.items() if i not in packed), key=lambda r: (r["key"], r["id"])
    )
    corrupt: list[tuple[dict, str]] = []
    for k in range(0, len(pool), maxcount):
        chunk = pool[k : k + maxcount]
        parts = []
        for rec, data in zip(chunk, _fetch(storage, [r["shard"] for r in chunk])):
            try:
                _check(data, rec["bytes"], rec["sha256"], "its ledger record")
                for b in _blocks_of(data, layout).values():
                    stats.update(b)
            except ValueError as e:
                corrupt.append((rec, str(e)))
                continue
            parts.append(data)
            bar.update(1)
        if corrupt:
            continue  # keep checking, to name every corrupt shard; publish nothing
        ids = [r["id"] for r in chunk]
        name, data = _pack_name(ids), _pack(parts)
        storage.write_bytes(name, data)
        shards.append(ShardInfo(name, len(chunk), len(data), hashlib.sha256(data).hexdigest()))
        members[name] = ids
    bar.close()
    if corrupt:
        for rec, why in corrupt:
            ledger.demote(rec["id"], f"corrupt shard {rec['shard']}: {why}")
        rec, why = corrupt[0]
        more = f" (and {len(corrupt) - 1} more)" if len(corrupt) > 1 else ""
        raise DatasetError(
            f"shard {storage.join(rec['shard'])}: {why}{more}; recorded as failed: re-run the "
            "collection to redo it"
        )

    bad = [(i, s) for i, s in state.items() if s in (REJECTED, FAILED)]
    rejected = sorted((rejection(r) for r in read_records(ledger, bad)), key=lambda r: r["key"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STATS
        stats.finalize().save(path)
        storage.write_file(STATS, path)
    storage.write_bytes("rejected.json", json.dumps(rejected, indent=2).encode())
    m = Manifest(
        layout_hash=layout.hash,
        block_size=layout.block_size,
        num_blocks=layout.num_blocks,
        num_samples=sum(s.samples for s in shards),
        shards=shards,
        extra={
            "layout": layout.to_dict(),
            "text_model": ident.get("text_model"),
            "preset": ident.get("preset"),
            "fingerprint": ident.get("fingerprint"),
            "ledger": {"done": len(done), "rejected_or_failed": len(bad)},
            "members": members,  # shard -> content ids of its samples, in order
        },
    )
    storage.write_bytes(MANIFEST, m.to_json().encode("utf-8"))
    return m
