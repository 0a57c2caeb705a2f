"""Launchers a test starts (torchrun, the cluster scripts): each in a session of its own, its
stdout and stderr captured together, and its process group and every descendant SIGKILLed by PID
when the test times out or fails, so no rank or worker outlives the test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence


def start(cmd: Sequence[str], env: dict[str, str], cwd=None, quiet: bool = False):
    """`cmd` in a new session (its PID is its process group's); output piped unless `quiet`."""
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    err = subprocess.DEVNULL if quiet else subprocess.STDOUT
    return subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
    )


def stop(procs) -> None:
    """SIGKILL every launch still running, its process group and every descendant, and reap it.
    Descendants count apart: torchrun starts each rank in a session of its own, so a SIGKILLed
    torchrun would leave its ranks running."""
    import psutil

    for p in procs:
        if p.poll() is not None:
            continue
        kids = []
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            os.killpg(p.pid, signal.SIGSTOP)  # the launcher starts nothing more while listed
            kids = psutil.Process(p.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        for k in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                k.kill()
        p.wait()
        psutil.wait_procs(kids, timeout=30)


def finish(procs, timeout: float) -> list[str]:
    """Each launch's whole output once every launch has exited, within `timeout` seconds in all;
    on a timeout or error every group is killed. Every pipe is drained at once (a thread each), so
    a launch that writes much while another is awaited never blocks on a full pipe."""
    outs = [""] * len(procs)

    def drain(i: int, p) -> None:
        outs[i] = p.stdout.read() if p.stdout is not None else ""

    readers = [
        threading.Thread(target=drain, args=(i, p), daemon=True) for i, p in enumerate(procs)
    ]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for t in readers:  # EOF once the launch and every descendant holding the pipe are gone
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in readers):  # a descendant still holds a pipe open
            raise subprocess.TimeoutExpired([p.args for p in procs], timeout)
        return list(outs)
    finally:
        stop(procs)


def run(cmd: Sequence[str], env: dict[str, str], *, timeout: float, cwd=None) -> str:
    """One launch to its end; asserts exit 0 (the output's tail in the message)."""
    proc = start(cmd, env, cwd=cwd)
    (output,) = finish([proc], timeout)
    assert proc.returncode == 0, output[-4000:]
    return output


def summary(*outputs: str) -> dict:
    """The one `summary: {json}` line over all outputs (rank 0 prints it, no other rank does)."""
    lines = [ln for text in outputs for ln in text.splitlines() if ln.startswith("summary: ")]
    assert len(lines) == 1, "\n".join(t[-2000:] for t in outputs)
    return json.loads(lines[0][len("summary: ") :])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous the launch binds a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
