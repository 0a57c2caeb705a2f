"""The S3 storage root (`s3://bucket/prefix`, boto3): each object written once, by a PUT or a
multipart upload that S3 publishes whole at completion; botocore retries every request, and what
outlasts it (a restarting server) is retried whole here. boto3 is imported when a root is opened;
its endpoint comes from the standard ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` variables.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import random
import time
from pathlib import Path

from weightgen.data.storage import (
    KeyNotFoundError,
    Storage,
    StorageError,
    _check_key,
    _tmp_name,
    is_temp_key,
)

log = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number") from None


_TRANSIENT_CODES = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "OperationAborted",
    }
)


def _transient(e: BaseException) -> bool:
    """True for errors worth retrying: connection refused/reset/timed out, a body cut short, 5xx,
    throttling.

    Follows ``__cause__`` / ``__context__``: boto3's managed transfers wrap the botocore error
    (``S3UploadFailedError``)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
    )

    seen = 0
    while e is not None and seen < 8:
        if isinstance(
            e,
            ConnectionError
            | HTTPClientError
            | IncompleteReadError
            | builtins.ConnectionError
            | TimeoutError,
        ):
            return True
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return err.get("Code") in _TRANSIENT_CODES or int(status) >= 500
        if type(e).__name__ in ("S3UploadFailedError", "RetriesExceededError"):
            msg = str(e)
            if any(c in msg for c in ("Could not connect", "Connection was closed", "timed out")):
                return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


class S3Storage(Storage):
    """``s3://bucket/prefix``. Picklable (the client is rebuilt lazily, e.g. inside a Ray task).

    Each object is written once, by the request that publishes it: ``put_object`` below
    ``multipart_threshold`` bytes (``WEIGHTGEN_S3_MULTIPART_MB``, default 64), above it a multipart
    upload of ``multipart_chunksize`` parts (``WEIGHTGEN_S3_PART_MB``, default 16; S3 needs >= 5
    MiB) that S3 publishes whole at ``CompleteMultipartUpload`` (s3transfer aborts a failed one).
    Reads go through s3transfer's download, which also retries a body cut off mid-stream.

    Retries: botocore retries every request (``AWS_RETRY_MODE``, default standard;
    ``AWS_MAX_ATTEMPTS``, default 10 here). Its budget is counted in attempts, with jitter scaled
    from 50 ms (10 attempts: at most ~25 s, half that on average) and a per-client retry quota: a
    server that restarts outlasts it (tests/test_storage_s3.py shows botocore alone giving up).
    Only then does this class retry the whole operation, with capped back-off, while the error
    is transient and for at most ``retry_seconds`` (``WEIGHTGEN_S3_RETRY_SECONDS``, default 120).
    ``botocore_retries`` and ``retries`` count the two (for tests and logs).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        multipart_threshold: int | None = None,
        multipart_chunksize: int | None = None,
        retry_seconds: float | None = None,
    ):
        if not bucket:
            raise StorageError("s3 URI has no bucket: use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = _check_key(prefix, allow_empty=True)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        mib = 1 << 20
        self.multipart_threshold = int(
            multipart_threshold or _env_float("WEIGHTGEN_S3_MULTIPART_MB", 64) * mib
        )
        self.multipart_chunksize = int(
            multipart_chunksize or _env_float("WEIGHTGEN_S3_PART_MB", 16) * mib
        )
        self.retry_seconds = float(
            retry_seconds
            if retry_seconds is not None
            else _env_float("WEIGHTGEN_S3_RETRY_SECONDS", 120)
        )
        self.retries = 0  # whole operations retried after botocore gave up
        self.botocore_retries = 0  # failed attempts botocore saw (it retries all but the last)
        self._client_obj = None

    _STATE = (
        "bucket",
        "prefix",
        "uri",
        "multipart_threshold",
        "multipart_chunksize",
        "retry_seconds",
    )

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in self._STATE}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.retries = 0
        self.botocore_retries = 0
        self._client_obj = None

    @property
    def _client(self):
        if self._client_obj is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StorageError(f"{self.uri}: s3:// needs boto3 (pip install boto3)") from None
            s3_opts = {}
            if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
                s3_opts["addressing_style"] = "path"  # MinIO, SeaweedFS, moto on an IP endpoint
            retries = {  # total attempts, as AWS_MAX_ATTEMPTS counts them
                "mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                "total_max_attempts": self._max_attempts,
            }
            config = Config(
                retries=retries,
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=16,
                s3=s3_opts or None,
            )
            client = boto3.session.Session().client("s3", config=config)
            client.meta.events.register("needs-retry.s3", self._count_botocore_retry)
            self._client_obj = client
        return self._client_obj

    @property
    def _max_attempts(self) -> int:
        return max(1, int(_env_float("AWS_MAX_ATTEMPTS", 10)))

    def _retried(self) -> str:
        """What was tried before giving up, for messages."""
        done = f"{self._max_attempts} attempts per request"
        return done + (f" and {self.retry_seconds:.0f} s of retries" if self.retry_seconds else "")

    def _count_botocore_retry(self, response=None, caught_exception=None, **_) -> None:
        """botocore asks this (and its own handler) after every attempt; returning None leaves
        the decision to botocore."""
        status = response[0].status_code if response else 0
        if caught_exception is not None or status >= 500:
            self.botocore_retries += 1

    @property
    def _transfer(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.multipart_chunksize, 5 << 20),
            max_concurrency=4,
            use_threads=True,
        )

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, action: str, key: str, fn):
        """``fn()`` until it succeeds, a non-transient error (-> StorageError), or the deadline.

        ``fn`` is one whole operation; botocore has already retried each of its requests, so this
        loop only runs once botocore has given up (a server down longer than its budget)."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return fn()
            except StorageError:
                raise
            except Exception as e:
                if not _transient(e) or time.monotonic() + delay > deadline:
                    raise self._error(action, key, e) from None
                self.retries += 1
                log.info(
                    "%s %s: %s after botocore's retries; retrying in %.1f s",
                    action,
                    self.join(key),
                    type(e).__name__,
                    delay,
                )
                time.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, 5.0)

    def _error(self, action: str, key: str, e: Exception) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self.join(key)
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"cannot {action} {where}: no AWS credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if isinstance(e, EndpointConnectionError):
            return StorageError(
                f"cannot {action} {where}: S3 endpoint unreachable ({e}) after "
                f"{self._retried()}; check the server and AWS_ENDPOINT_URL"
            )
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = err.get("Code", "?")
            if code in ("NoSuchKey", "404", "NotFound"):
                return KeyNotFoundError(f"no such key: {where}")
            if code == "NoSuchBucket":
                return StorageError(
                    f"cannot {action} {where}: bucket {self.bucket!r} does not exist; "
                    "check the name or create it"
                )
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(
                    f"cannot {action} {where}: access denied ({code}); check the credentials' "
                    "permissions on this bucket"
                )
            return StorageError(f"cannot {action} {where}: {code}: {err.get('Message', '')}")
        if _transient(e):
            return StorageError(
                f"cannot {action} {where}: S3 still failing after {self._retried()} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "check the server and AWS_ENDPOINT_URL"
            )
        return StorageError(f"cannot {action} {where}: {type(e).__name__}: {e}")

    def write_bytes(self, key: str, data: bytes) -> None:
        data = bytes(data)
        final = self._key(key)

        def put() -> None:
            if len(data) >= self.multipart_threshold:
                self._client.upload_fileobj(
                    io.BytesIO(data), self.bucket, final, Config=self._transfer
                )
            else:
                self._client.put_object(Bucket=self.bucket, Key=final, Body=data)

        self._retry("write", key, put)

    def write_file(self, key: str, local_path: str | os.PathLike) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise StorageError(f"cannot upload {src} to {self.join(key)}: not a file")
        final = self._key(key)
        self._retry(
            "write",
            key,
            lambda: self._client.upload_file(str(src), self.bucket, final, Config=self._transfer),
        )

    def read_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            buf = io.BytesIO()
            self._client.download_fileobj(self.bucket, self._key(key), buf, Config=self._transfer)
            return buf.getvalue()

        return self._retry("read", key, get)

    def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except Exception as e:
                if isinstance(self._error("check", key, e), KeyNotFoundError):
                    return False
                raise

        return self._retry("check", key, head)

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""

        def pages() -> list[str]:
            keys = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(root) :]
                    if key and not is_temp_key(key):
                        keys.append(key)
            return keys

        return sorted(self._retry("list", prefix, pages))

    def delete(self, key: str) -> None:
        self._retry(
            "delete",
            key,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )

    def child(self, subdir: str) -> S3Storage:
        sub = _check_key(subdir)
        return S3Storage(
            self.bucket,
            f"{self.prefix}/{sub}" if self.prefix else sub,
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            retry_seconds=self.retry_seconds,
        )

    def check_writable(self) -> None:
        from botocore.exceptions import ClientError

        def head_bucket() -> bool:
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return True
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "?")
                if code in ("404", "NoSuchBucket", "NotFound"):
                    return False
                raise

        if not self._retry("access bucket of", "", head_bucket):
            self._create_bucket()
        probe = _tmp_name("write-probe")

        def put_and_delete() -> None:
            self._client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"")
            self._client.delete_object(Bucket=self.bucket, Key=self._key(probe))

        self._retry("write", probe, put_and_delete)

    def _create_bucket(self) -> None:
        c = self._client
        region = c.meta.region_name
        kw = {}
        if region and region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}

        def create() -> None:
            try:
                c.create_bucket(Bucket=self.bucket, **kw)
                log.info("created bucket s3://%s", self.bucket)
            except Exception as e:
                code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._retry("create bucket for", "", create)
