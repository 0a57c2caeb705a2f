"""tests/_procs.py, which every launcher test relies on to leave nothing running: a launch whose
child escaped into a session of its own (as torchrun's ranks do) is stopped whole."""

import os
import subprocess
import sys
import time

import psutil
import pytest
from _procs import finish, start, summary

# a launcher that starts a child in a new session, prints its PID and waits for it
LAUNCHER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print(child.pid, flush=True)
child.wait()
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_timeout_kills_a_child_in_its_own_session():
    proc = start([sys.executable, "-c", LAUNCHER], dict(os.environ))
    child = int(proc.stdout.readline())
    assert _running(child)
    with pytest.raises(subprocess.TimeoutExpired):
        finish([proc], timeout=0.5)
    assert proc.returncode is not None
    deadline = time.monotonic() + 30  # SIGKILL is delivered at once; this only bounds the poll
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def test_summary_is_the_one_rank_zero_line():
    assert summary('x\nsummary: {"a": 1}\n', "y\n") == {"a": 1}
    for bad in (("none here",), ("summary: {}", "summary: {}")):
        with pytest.raises(AssertionError):
            summary(*bad)


def test_a_talkative_launch_does_not_block_on_its_pipe(tmp_path):
    """The first launch waits for a file the second writes only after 1 MB of output (16 pipe
    buffers): read one pipe at a time, the second blocks on its pipe and the pair hangs."""
    flag = tmp_path / "flag"
    waiter = (
        f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.01)\nprint('a')"
    )
    talker = (
        f"import sys\nsys.stdout.write('x' * 2**20)\nsys.stdout.flush()\nopen({str(flag)!r}, 'w')"
    )
    procs = [start([sys.executable, "-c", code], dict(os.environ)) for code in (waiter, talker)]
    a, b = finish(procs, timeout=120)
    assert a == "a\n" and b == "x" * 2**20
