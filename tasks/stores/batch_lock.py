"""One batch at a time: an exclusive file lock on the workspace, and, when the queue is shared (PostgreSQL),
a session advisory lock on the queue's database, so that workers on several machines never run two batches
at once. Both are released by the OS or the server when the holder dies."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from lethe.tasks.stores.queue_database import parse_location

BATCH_LOCK = 0x4C455448_42415443 & 0x7FFFFFFFFFFFFFFF  # "LETHBATC": one batch across every machine


class BatchAlreadyRunning(RuntimeError):
    pass


@contextmanager
def batch_lock(path: Path, queue_location: str | Path | None = None):
    """Hold the workspace's file lock and, for a PostgreSQL queue, the database's batch lock."""
    with file_lock(path):
        if queue_location is not None and parse_location(queue_location)[0] == "postgresql":
            with database_lock(str(queue_location)):
                yield
        else:
            yield


@contextmanager
def file_lock(path: Path):
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


@contextmanager
def database_lock(url: str):
    """A session-level advisory lock, held on its own connection for the whole batch."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
        got = connection.execute("SELECT pg_try_advisory_lock(%s)", (BATCH_LOCK,)).fetchone()[0]
        if not got:
            holder = connection.execute(
                "SELECT a.client_addr, a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                (BATCH_LOCK,),
            ).fetchone()
            where = "holder unknown"
            if holder:
                where = f"client {holder[0] or 'local'}, server pid {holder[1]}, since {holder[2]:%Y-%m-%d %H:%M:%S}"
            raise BatchAlreadyRunning(
                f"another batch holds the shared queue's batch lock ({where}); wait for it to finish"
            )
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (BATCH_LOCK,))
