"""The collection ledger: one small JSON object per job outcome, in the dataset's own storage.

    ledger/<content_id>.done.json       the job's shard is published: key, shard, bytes, sha256, ...
    ledger/<content_id>.rejected.json   the result failed vetting: key, reason
    ledger/<content_id>.failed.json     the task failed after its retries: key, reason, attempts
    attempts/<content_id>/<hex>.json    one per started attempt (host, pid, time)

Every record is written atomically (Storage: temporary name, then final name) under a name that
only its own job uses, so any number of drivers and tasks write side by side without clobbering
each other, and one listing of ``ledger/`` tells every job's state without reading a record.
``done`` and ``rejected`` are final: a re-run skips them. ``failed`` is not: a re-run tries again.
When several records of one id exist (a retry that succeeded after a failure was recorded), the
precedence is done > rejected > failed.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from weightgen.data import KeyNotFoundError, Storage

DONE, REJECTED, FAILED = "done", "rejected", "failed"
STATUSES = (DONE, REJECTED, FAILED)  # precedence, highest first
FINAL = (DONE, REJECTED)
LEDGER, ATTEMPTS = "ledger", "attempts"


def _rank(status: str) -> int:
    return STATUSES.index(status)


class Ledger:
    def __init__(self, storage: Storage):
        self.storage = storage

    @staticmethod
    def record_key(content_id: str, status: str) -> str:
        if status not in STATUSES:
            raise ValueError(f"ledger status must be one of {STATUSES}, got {status!r}")
        return f"{LEDGER}/{content_id}.{status}.json"

    # -- reading --------------------------------------------------------------------------------

    def scan(self) -> dict[str, str]:
        """{content_id: status} of every recorded job (one listing; records are not read)."""
        out: dict[str, str] = {}
        for key in self.storage.list(f"{LEDGER}/"):
            name = key[len(LEDGER) + 1 :]
            cid, _, rest = name.partition(".")
            status = rest.removesuffix(".json")
            if "/" in name or status not in STATUSES:
                continue
            if cid not in out or _rank(status) < _rank(out[cid]):
                out[cid] = status
        return out

    def final_status(self, content_id: str) -> str | None:
        """DONE or REJECTED when the job is finished, else None (two existence checks)."""
        for status in FINAL:
            if self.storage.exists(self.record_key(content_id, status)):
                return status
        return None

    def read(self, content_id: str, status: str) -> dict | None:
        try:
            return json.loads(self.storage.read_bytes(self.record_key(content_id, status)))
        except KeyNotFoundError:
            return None

    def attempts(self, content_id: str) -> int:
        return len(self.storage.list(f"{ATTEMPTS}/{content_id}/"))

    def attempt_counts(self) -> dict[str, int]:
        """{content_id: started attempts} of every job (one listing)."""
        out: dict[str, int] = {}
        for key in self.storage.list(f"{ATTEMPTS}/"):
            cid = key.split("/")[1]
            out[cid] = out.get(cid, 0) + 1
        return out

    # -- writing --------------------------------------------------------------------------------

    def start_attempt(self, content_id: str) -> None:
        """Mark one started attempt; ``attempts()`` counts them (Ray does not expose its count)."""
        info = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        key = f"{ATTEMPTS}/{content_id}/{uuid.uuid4().hex[:12]}.json"
        self.storage.write_bytes(key, json.dumps(info).encode())

    def write(self, content_id: str, status: str, **fields) -> dict:
        """Publish the record, then drop lower-precedence records of the same id."""
        record = {"id": content_id, "status": status, "time": time.time(), **fields}
        data = json.dumps(record, sort_keys=True, allow_nan=False).encode()
        self.storage.write_bytes(self.record_key(content_id, status), data)
        for lower in STATUSES[_rank(status) + 1 :]:
            self.storage.delete(self.record_key(content_id, lower))
        return record

    def demote(self, content_id: str, reason: str) -> None:
        """A done job whose shard turned out corrupt: record it failed, so a re-run redoes it."""
        old = self.read(content_id, DONE) or {}
        self.storage.write_bytes(
            self.record_key(content_id, FAILED),
            json.dumps(
                {
                    "id": content_id,
                    "status": FAILED,
                    "key": old.get("key"),
                    "reason": reason,
                    "attempts": self.attempts(content_id),
                    "time": time.time(),
                },
                sort_keys=True,
            ).encode(),
        )
        self.storage.delete(self.record_key(content_id, DONE))


def rejection(rec: dict) -> dict:
    """A rejected or failed record as rejected.json lists it."""
    r = {"key": rec.get("key"), "reason": rec.get("reason")}
    if rec.get("status") == FAILED:
        r.update(status=FAILED, attempts=rec.get("attempts"))
    return r


def read_records(ledger: Ledger, items: list[tuple[str, str]], threads: int = 8) -> list[dict]:
    """The records of (id, status) `items` that exist, read `threads` at a time (S3 latency)."""
    with ThreadPoolExecutor(threads) as ex:
        recs = ex.map(lambda it: ledger.read(*it), items)
        return [r for r in recs if r is not None]
