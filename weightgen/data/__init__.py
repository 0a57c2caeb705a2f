"""Storage URIs (local path, file://, s3://) and webdataset shards of weight sets."""

from weightgen.data.s3 import S3Storage
from weightgen.data.shards import (
    MANIFEST,
    DatasetError,
    Manifest,
    ShardInfo,
    ShardWriter,
    WeightSample,
    iter_samples,
    load_all,
    read_manifest,
)
from weightgen.data.storage import KeyNotFoundError, LocalStorage, Storage, StorageError
from weightgen.data.uris import open_storage

__all__ = [
    "MANIFEST",
    "DatasetError",
    "KeyNotFoundError",
    "LocalStorage",
    "Manifest",
    "S3Storage",
    "ShardInfo",
    "ShardWriter",
    "Storage",
    "StorageError",
    "WeightSample",
    "iter_samples",
    "load_all",
    "open_storage",
    "read_manifest",
]
