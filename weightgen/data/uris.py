"""Storage roots by URI: a plain path or ``file://...`` (weightgen.data.storage.LocalStorage) and
``s3://bucket/prefix`` (weightgen.data.s3.S3Storage)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from weightgen.data.s3 import S3Storage
from weightgen.data.storage import LocalStorage, Storage, StorageError


def open_storage(uri: str | os.PathLike | Storage) -> Storage:
    """Plain path or ``file://`` -> LocalStorage; ``s3://bucket/prefix`` -> S3Storage."""
    if isinstance(uri, Storage):
        return uri
    if isinstance(uri, os.PathLike):
        return LocalStorage(uri)
    if not isinstance(uri, str) or not uri:
        raise StorageError(
            f"bad storage URI {uri!r}: give a path, file://PATH or s3://bucket/prefix"
        )
    if "://" not in uri:
        return LocalStorage(uri)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        host = parsed.netloc
        path = unquote(parsed.path)
        if host and host != "localhost":  # file://relative/dir
            path = host + path
        if not path:
            raise StorageError(f"bad storage URI {uri!r}: file:// needs a path")
        return LocalStorage(path)
    if scheme in ("s3", "s3a"):
        prefix = str(PurePosixPath(unquote(parsed.path))).strip("/") if parsed.path else ""
        return S3Storage(parsed.netloc, "" if prefix == "." else prefix)
    raise StorageError(
        f"unsupported storage URI {uri!r}: use a path, file://PATH or s3://bucket/prefix"
    )
