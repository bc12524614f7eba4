"""One batch at a time per workspace: an exclusive file lock, released by the OS if the process dies."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


class BatchAlreadyRunning(RuntimeError):
    pass


@contextmanager
def batch_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise BatchAlreadyRunning(
                f"another batch holds {path} ({handle.read().strip() or 'unknown pid'}); wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
