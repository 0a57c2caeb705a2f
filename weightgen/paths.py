"""Output folders a user names: checked writable before any work starts (one-line errors)."""

from __future__ import annotations

import os
from pathlib import Path

from weightgen.errors import WeightgenError


def check_dir_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WeightgenError(f"cannot write to {path}: {e.strerror or e}") from None


def check_parent_writable(path: str) -> None:
    check_dir_writable(Path(path).resolve().parent)
