"""Storage roots: the interface every storage access goes through, and the local one (a plain
path or ``file://...``; S3 is weightgen.data.s3, roots by URI weightgen.data.uris).

Keys are '/'-separated paths relative to the root. Writes are atomic: a reader sees the whole
object or none. Locally through a temporary name (basename containing ``.wgtmp-``, never listed)
renamed onto the final one; on S3 because a PUT, and a multipart upload at its completion,
publishes the whole object at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

TMP_MARK = ".wgtmp-"


class StorageError(RuntimeError):
    """One line: which URI/key failed and what to do."""


class KeyNotFoundError(StorageError):
    """``read_bytes`` of a key that does not exist."""


def _check_key(key: str, *, allow_empty: bool = False) -> str:
    if not isinstance(key, str):
        raise StorageError(f"storage key must be a str, got {type(key).__name__}")
    key = key.strip("/")
    if not key and not allow_empty:
        raise StorageError("storage key is empty")
    if key and any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"bad storage key {key!r}: no empty, '.' or '..' components")
    return key


def _tmp_name(key: str) -> str:
    """``a/b.tar`` -> ``a/.b.tar.wgtmp-<hex>`` (same folder, hidden, excluded by ``list``)."""
    head, _, base = key.rpartition("/")
    tmp = f".{base}{TMP_MARK}{uuid.uuid4().hex}"
    return f"{head}/{tmp}" if head else tmp


def is_temp_key(key: str) -> bool:
    return TMP_MARK in key.rpartition("/")[2]


class Storage:
    """Interface; see LocalStorage and S3Storage. ``uri`` names the root."""

    uri: str

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def write_file(self, key: str, local_path: str | os.PathLike) -> None:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def child(self, subdir: str) -> Storage:
        raise NotImplementedError

    def local_path(self, key: str = "") -> Path | None:
        return None

    def check_writable(self) -> None:
        raise NotImplementedError

    def join(self, key: str) -> str:
        """Full URI of ``key`` (for messages)."""
        key = key.strip("/")
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.uri))


# --------------------------------------------------------------------------------------------
# Local filesystem
# --------------------------------------------------------------------------------------------


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _publish(self, key: str, fill) -> None:
        """``fill(tmp_path)`` writes the content; then rename onto the final name."""
        path = self._path(key)
        tmp = self.root / _tmp_name(_check_key(key))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fill(tmp)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(
                f"cannot write {path}: {e.strerror or e}; check that the folder is writable"
            ) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        def fill(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        self._publish(key, fill)

    def write_file(self, key: str, local_path: str | os.PathLike) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise StorageError(f"cannot upload {src} to {self.join(key)}: not a file")
        self._publish(key, lambda tmp: shutil.copyfile(src, tmp))

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFoundError(f"no such file: {path}") from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror or e}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        # walk only below the prefix's folder part: listing ledger/ must not visit every shard
        head = prefix.rpartition("/")[0]
        start = self.root / _check_key(head) if head else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _, files in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not is_temp_key(key):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {e.strerror or e}") from None

    def child(self, subdir: str) -> LocalStorage:
        return LocalStorage(self.root / _check_key(subdir))

    def local_path(self, key: str = "") -> Path:
        key = _check_key(key, allow_empty=True)
        return self.root / key if key else self.root

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(
                f"cannot create output folder {self.root}: {e.strerror or e}; "
                "choose another --out or remove what is in the way"
            ) from None
        probe = _tmp_name("write-probe")
        self.write_bytes(probe, b"")
        self.delete(probe)
