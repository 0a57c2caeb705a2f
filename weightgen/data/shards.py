"""Weight-set datasets as webdataset shards plus a manifest (DESIGN.md, "Contracts").

A dataset root holds ``shard-000000.tar`` ... and ``manifest.json``, written last; readers trust only
the shards the manifest lists. One sample = tar members ``KEY.blocks.npy`` ((N, S) float32, not
normalised), ``KEY.text.npy`` ((D,) float32), optional ``KEY.tokens.npy`` ((L, D) float16/32) and
``KEY.meta.json``. Arrays are decoded with ``np.load(allow_pickle=False)`` only: never pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from weightgen.data.storage import KeyNotFoundError, Storage
from weightgen.data.uris import open_storage

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "weightgen-shards/1"
_KEY_RE = re.compile(r"[\w\-]+")  # no '.', '/', whitespace: the webdataset __key__
_MEMBERS = ("blocks.npy", "text.npy", "tokens.npy", "meta.json")


class DatasetError(RuntimeError):
    """One line naming the shard or dataset and the cause."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class WeightSample:
    key: str  # concept id + seed, e.g. "c0123-s0"; no '.'
    blocks: np.ndarray  # (N, S) float32, not normalised
    text: np.ndarray  # (D,) float32 pooled text embedding
    tokens: np.ndarray | None = None  # (L, D) float16/float32 token embeddings
    meta: dict = field(default_factory=dict)  # concept text, family, params, seed, layout_hash, ...


@dataclass
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    layout_hash: str
    block_size: int  # S
    num_blocks: int  # N
    num_samples: int
    shards: list[ShardInfo] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # layout dict, text model, created, rejected, ...

    @property
    def shard_names(self) -> list[str]:
        return [s.name for s in self.shards]

    def to_json(self) -> str:
        d = {"format": FORMAT, **asdict(self)}
        return json.dumps(d, indent=1, sort_keys=True, allow_nan=False, default=_json_default)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; any problem -> ValueError with one line."""
        try:
            d = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, this reader knows {FORMAT!r}")
        try:
            shards = [
                ShardInfo(str(s["name"]), int(s["samples"]), int(s["bytes"]), str(s["sha256"]))
                for s in d["shards"]
            ]
            m = cls(
                layout_hash=str(d["layout_hash"]),
                block_size=int(d["block_size"]),
                num_blocks=int(d["num_blocks"]),
                num_samples=int(d["num_samples"]),
                shards=shards,
                extra=dict(d.get("extra") or {}),
            )
        except KeyError as e:
            raise ValueError(f"missing field {e}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad field ({e})") from None
        for s in m.shards:
            if "/" in s.name or s.name.startswith(".") or not s.name:
                raise ValueError(f"bad shard name {s.name!r}")
        if sum(s.samples for s in m.shards) != m.num_samples:
            raise ValueError(f"num_samples {m.num_samples} != sum over shards")
        return m


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _float_array(x, what: str, ndim: int, keep_f16: bool = False) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.hasobject or not np.can_cast(a.dtype, np.float32, casting="same_kind"):
        raise ValueError(f"{what}: dtype {a.dtype} is not castable to float32")
    if a.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dims, got shape {a.shape}")
    dtype = np.float16 if keep_f16 and a.dtype == np.float16 else np.float32
    with np.errstate(over="ignore"):
        a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: contains NaN or Inf (after cast to {dtype.__name__})")
    return a


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


class ShardWriter:
    """Write WeightSamples into ``{prefix}-{i:06d}.tar`` shards of ``maxcount`` samples under ``out``.

    Each shard is built in a local temp file, hashed, then published atomically through Storage;
    ``close()`` writes ``manifest.json`` last. An exception inside ``with`` writes no manifest (and
    a stale manifest from an earlier run in the same root is deleted on open).
    """

    def __init__(
        self,
        out: str | os.PathLike | Storage,
        *,
        layout_hash: str,
        block_size: int,
        num_blocks: int,
        maxcount: int = 64,
        prefix: str = "shard",
        extra: dict | None = None,
    ):
        if not isinstance(layout_hash, str) or not layout_hash:
            raise ValueError("layout_hash must be a non-empty str")
        if int(block_size) < 1 or int(num_blocks) < 1 or int(maxcount) < 1:
            raise ValueError(
                f"block_size, num_blocks, maxcount must be >= 1, got {block_size}, {num_blocks}, "
                f"{maxcount}"
            )
        if not _KEY_RE.fullmatch(prefix):
            raise ValueError(f"shard prefix {prefix!r} may hold only letters, digits, '_' and '-'")
        self.layout_hash = layout_hash
        self.block_size = int(block_size)
        self.num_blocks = int(num_blocks)
        self.maxcount = int(maxcount)
        self.prefix = prefix
        self.extra = dict(extra or {})
        try:
            json.dumps(self.extra, allow_nan=False, default=_json_default)
        except (TypeError, ValueError) as e:
            raise ValueError(f"manifest extra is not JSON serialisable: {e}") from None

        self.storage = open_storage(out)
        self.storage.check_writable()
        if self.storage.exists(MANIFEST):
            log.warning("replacing the dataset at %s: removing its old manifest", self.storage.uri)
            self.storage.delete(MANIFEST)

        self._tmpdir = Path(tempfile.mkdtemp(prefix="weightgen-shards-"))
        self._shards: list[ShardInfo] = []
        self._keys: set[str] = set()
        self._text_dim: int | None = None
        self._fh = None
        self._tar = None  # webdataset.TarWriter of the open shard
        self._tar_path: Path | None = None
        self._count = 0  # samples in the open shard
        self._manifest: Manifest | None = None
        self._closed = False

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing --------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return len(self._keys)

    def write(self, sample: WeightSample) -> None:
        """Validate and append one sample; ValueError (nothing written) if it is malformed."""
        if self._closed:
            raise RuntimeError(f"ShardWriter for {self.storage.uri} is closed")
        members = self._encode(sample)
        if self._tar is None:
            self._open_shard()
        self._tar.write(members)
        self._keys.add(sample.key)
        self._count += 1
        if self._count >= self.maxcount:
            self._finish_shard()

    def _encode(self, sample: WeightSample) -> dict:
        key = sample.key
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"sample key {key!r}: use letters, digits, '_' and '-' only (no '.')")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice to {self.storage.uri}")
        blocks = _float_array(sample.blocks, f"sample {key}: blocks", 2)
        if blocks.shape != (self.num_blocks, self.block_size):
            raise ValueError(
                f"sample {key}: blocks shape {blocks.shape}, expected "
                f"({self.num_blocks}, {self.block_size})"
            )
        text = _float_array(sample.text, f"sample {key}: text", 1)
        if self._text_dim is not None and text.shape[0] != self._text_dim:
            raise ValueError(f"sample {key}: text dim {text.shape[0]}, earlier {self._text_dim}")
        if not isinstance(sample.meta, dict):
            raise ValueError(f"sample {key}: meta must be a dict, got {type(sample.meta).__name__}")
        meta = dict(sample.meta)
        if meta.setdefault("layout_hash", self.layout_hash) != self.layout_hash:
            raise ValueError(
                f"sample {key}: meta layout_hash {meta['layout_hash']!r} != writer's "
                f"{self.layout_hash!r}"
            )
        try:
            meta_json = json.dumps(meta, sort_keys=True, allow_nan=False, default=_json_default)
        except (TypeError, ValueError) as e:
            raise ValueError(f"sample {key}: meta is not strict JSON ({e})") from None
        members = {
            "__key__": key,
            "blocks.npy": _npy_bytes(blocks),
            "text.npy": _npy_bytes(text),
            "meta.json": meta_json.encode("utf-8"),
        }
        if sample.tokens is not None:
            tokens = _float_array(sample.tokens, f"sample {key}: tokens", 2, keep_f16=True)
            members["tokens.npy"] = _npy_bytes(tokens)
        self._text_dim = text.shape[0]
        return members

    def _shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def _open_shard(self) -> None:
        from webdataset import TarWriter  # imports torch: only when writing

        self._tar_path = self._tmpdir / self._shard_name(len(self._shards))
        self._fh = open(self._tar_path, "wb")
        # mtime fixed: the same samples give byte-identical shards (and the same sha256)
        self._tar = TarWriter(self._fh, encoder=False, mtime=0.0, user="weightgen", group="")
        self._count = 0

    def _finish_shard(self) -> None:
        self._tar.close()
        self._fh.close()
        path, name = self._tar_path, self._tar_path.name
        info = ShardInfo(name, self._count, path.stat().st_size, _sha256_file(path))
        self.storage.write_file(name, path)
        path.unlink()
        self._shards.append(info)
        self._tar = self._fh = self._tar_path = None
        self._count = 0
        log.debug(
            "wrote %s (%d samples, %d bytes)", self.storage.join(name), info.samples, info.bytes
        )

    def close(self) -> Manifest:
        """Flush the last shard, then write manifest.json (atomic). Idempotent."""
        if self._manifest is not None:
            return self._manifest
        if self._closed:
            raise RuntimeError(f"ShardWriter for {self.storage.uri} was aborted")
        try:
            if self._tar is not None and self._count > 0:
                self._finish_shard()
            m = Manifest(
                layout_hash=self.layout_hash,
                block_size=self.block_size,
                num_blocks=self.num_blocks,
                num_samples=sum(s.samples for s in self._shards),
                shards=list(self._shards),
                extra=self.extra,
            )
            self.storage.write_bytes(MANIFEST, m.to_json().encode("utf-8"))
        except BaseException:
            self.abort()
            raise
        self._manifest = m
        self._cleanup()
        return m

    def abort(self) -> None:
        """Drop the open shard; no manifest is written. Published shards stay, unlisted."""
        with contextlib.suppress(Exception):
            if self._tar is not None:
                self._tar.close()
        with contextlib.suppress(Exception):
            if self._fh is not None:
                self._fh.close()
        self._tar = self._fh = None
        self._cleanup()

    def _cleanup(self) -> None:
        self._closed = True
        shutil.rmtree(self._tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_manifest(src: str | os.PathLike | Storage) -> Manifest:
    st = open_storage(src)
    return _read_manifest(st)


def _read_manifest(st: Storage) -> Manifest:
    try:
        raw = st.read_bytes(MANIFEST)
    except KeyNotFoundError:
        raise DatasetError(
            f"no manifest.json at {st.uri}: not a dataset, or its writer did not finish (re-run it)"
        ) from None
    try:
        return Manifest.from_json(raw)
    except ValueError as e:
        raise DatasetError(f"no valid manifest.json at {st.uri}: corrupt ({e})") from None


def iter_samples(
    src: str | os.PathLike | Storage,
    *,
    expected_layout_hash: str | None = None,
    verify: bool = True,
    shards: list[str] | None = None,
) -> Iterator[WeightSample]:
    """Samples of the shards listed in the manifest (or the subset ``shards``), in order.

    ``verify`` checks each shard's size and sha256 against the manifest before decoding it.
    """
    st = open_storage(src)
    m = _read_manifest(st)
    yield from _iter(st, m, expected_layout_hash, verify, shards)


def _iter(st, m, expected_layout_hash, verify, shards) -> Iterator[WeightSample]:
    if expected_layout_hash is not None and m.layout_hash != expected_layout_hash:
        raise DatasetError(
            f"dataset {st.uri} has layout hash {m.layout_hash!r}, expected "
            f"{expected_layout_hash!r}: it was collected for another LoRA layout or block size"
        )
    infos = m.shards
    if shards is not None:
        by_name = {s.name: s for s in m.shards}
        unknown = [n for n in shards if n not in by_name]
        if unknown:
            raise DatasetError(f"dataset {st.uri}: shards {unknown} are not in its manifest")
        infos = [by_name[n] for n in shards]
    for info in infos:
        yield from _read_shard(st, m, info, verify)


def _read_shard(st: Storage, m: Manifest, info: ShardInfo, verify: bool) -> Iterator[WeightSample]:
    where = st.join(info.name)
    try:
        data = st.read_bytes(info.name)
    except KeyNotFoundError:
        raise DatasetError(f"shard {where} is listed in the manifest but missing") from None
    if verify:
        if len(data) != info.bytes:
            raise DatasetError(
                f"shard {where}: {len(data)} bytes, manifest says {info.bytes} (truncated or replaced)"
            )
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise DatasetError(
                f"shard {where}: sha256 mismatch (corrupt or replaced); re-collect it"
            )
    groups = _tar_groups(data, where)
    if len(groups) != info.samples:
        raise DatasetError(
            f"shard {where}: {len(groups)} samples, manifest says {info.samples} (truncated?)"
        )
    for key, members in groups:
        yield _decode(key, members, where, m)


def _tar_groups(data: bytes, where: str) -> list[tuple[str, dict[str, bytes]]]:
    """Tar bytes -> [(key, {ext: bytes})], members grouped by consecutive key (webdataset rule)."""
    groups: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, dot, ext = member.name.partition(".")
                if not dot or "/" in member.name:
                    raise DatasetError(f"shard {where}: unexpected member {member.name!r}")
                if not groups or groups[-1][0] != key:
                    groups.append((key, {}))
                f = tf.extractfile(member)
                groups[-1][1][ext] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"shard {where}: corrupt or truncated tar ({e})") from None
    return groups


def _load_npy(b: bytes, what: str) -> np.ndarray:
    try:
        a = np.load(io.BytesIO(b), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{what} is not a plain .npy array ({e})") from None
    if not isinstance(a, np.ndarray) or a.dtype.hasobject:
        raise DatasetError(f"{what} is not a plain .npy array")
    return a


def _decode(key: str, members: dict[str, bytes], where: str, m: Manifest) -> WeightSample:
    what = f"shard {where}: sample {key}"
    for ext in ("blocks.npy", "text.npy", "meta.json"):
        if ext not in members:
            raise DatasetError(f"{what} has no {ext}")
    blocks = _load_npy(members["blocks.npy"], f"{what}: blocks.npy")
    if blocks.shape != (m.num_blocks, m.block_size) or blocks.dtype != np.float32:
        raise DatasetError(
            f"{what}: blocks {blocks.dtype} {blocks.shape}, manifest says float32 "
            f"({m.num_blocks}, {m.block_size})"
        )
    text = _load_npy(members["text.npy"], f"{what}: text.npy")
    if text.ndim != 1:
        raise DatasetError(f"{what}: text.npy shape {text.shape}, expected (D,)")
    tokens = None
    if "tokens.npy" in members:
        tokens = _load_npy(members["tokens.npy"], f"{what}: tokens.npy")
        if tokens.ndim != 2:
            raise DatasetError(f"{what}: tokens.npy shape {tokens.shape}, expected (L, D)")
    try:
        meta = json.loads(members["meta.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{what}: meta.json is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{what}: meta.json is not an object")
    if meta.get("layout_hash") != m.layout_hash:
        raise DatasetError(
            f"{what}: layout hash {meta.get('layout_hash')!r}, manifest says {m.layout_hash!r}"
        )
    return WeightSample(key=key, blocks=blocks, text=text, tokens=tokens, meta=meta)


def load_all(
    src: str | os.PathLike | Storage,
    *,
    expected_layout_hash: str | None = None,
    verify: bool = True,
    shards: list[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
    """Whole small dataset in memory: keys, blocks (M, N, S) f32, text (M, D) f32, metas.

    Keywords as for ``iter_samples``. Token embeddings are not loaded.
    """
    st = open_storage(src)
    m = _read_manifest(st)
    keys, blocks, texts, metas = [], [], [], []
    for s in _iter(st, m, expected_layout_hash, verify, shards):
        keys.append(s.key)
        blocks.append(s.blocks)
        texts.append(s.text.astype(np.float32, copy=False))
        metas.append(s.meta)
    if not keys:
        empty = np.zeros((0, m.num_blocks, m.block_size), np.float32)
        return [], empty, np.zeros((0, 0), np.float32), []
    if len({t.shape for t in texts}) != 1:
        raise DatasetError(f"dataset {st.uri}: text embeddings of different sizes")
    return keys, np.stack(blocks), np.stack(texts), metas
