"""Where the request queue lives: a SQLite file (the embedded default) or a PostgreSQL database that every
machine sees (the server profile). Both give the queue the same thing: a transaction that no other writer
interleaves with, and one versioned schema.

- SQLite: `BEGIN IMMEDIATE` takes the file's write lock for the whole transaction.
- PostgreSQL: every transaction first takes a transaction-scoped advisory lock (`pg_advisory_xact_lock`),
  so claims and state changes from any number of machines are serialised exactly as on one machine; the lock
  ends with the transaction, also when the client dies.

The schema is a list of numbered migrations recorded in `schema_migrations`; opening a database applies the
missing ones, in one transaction. A SQLite queue file made before migrations existed is recognised and
brought up to date in place (its rows kept).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from lethe.tasks.outages import ServiceUnavailable

QUEUE_LOCK = 0x4C455448_51554555 & 0x7FFFFFFFFFFFFFFF  # "LETHQUEU": the advisory lock of queue transactions
LOCK_WAIT_SECONDS = 30  # how long a SQLite queue transaction waits for another process's write to end


class QueueLocationError(ValueError):
    """A queue location that is neither a SQLite file nor a PostgreSQL URL, or one that carries a password."""


class Transaction:
    """One open transaction: `execute(sql, params)` with `?` placeholders on either engine; rows read by name."""

    def __init__(self, connection, kind: str):
        self.connection, self.kind = connection, kind

    def execute(self, sql: str, params: tuple = ()):
        if self.kind == "postgresql":
            sql = sql.replace("?", "%s")
        return self.connection.execute(sql, params)

    def columns(self, table: str) -> set[str]:
        if self.kind == "sqlite":
            return {row["name"] for row in self.execute(f"PRAGMA table_info({table})")}
        rows = self.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
        return {row["column_name"] for row in rows}


def _requests_table(tx: Transaction) -> None:
    key = "id INTEGER PRIMARY KEY AUTOINCREMENT" if tx.kind == "sqlite" else "id BIGSERIAL PRIMARY KEY"
    tx.execute(
        f"CREATE TABLE IF NOT EXISTS requests ({key}, concept TEXT NOT NULL, anchor TEXT, "
        "note TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'pending', created_at TEXT NOT NULL, "
        "started_at TEXT, finished_at TEXT, attempts INTEGER NOT NULL DEFAULT 0, version TEXT, "
        "reasons TEXT NOT NULL DEFAULT '')"
    )
    tx.execute("CREATE INDEX IF NOT EXISTS requests_state ON requests (state, id)")


def _request_prompts(tx: Transaction) -> None:
    present = tx.columns("requests")
    for name in ("prompts", "anchor_prompts"):
        if name not in present:
            tx.execute(f"ALTER TABLE requests ADD COLUMN {name} TEXT NOT NULL DEFAULT '[]'")


def _inbox_objects(tx: Transaction) -> None:
    """Request objects read from an S3 inbox: each (bucket, key, ETag) enters the queue at most once."""
    tx.execute(
        "CREATE TABLE IF NOT EXISTS inbox_objects (bucket TEXT NOT NULL, object_key TEXT NOT NULL, "
        "etag TEXT NOT NULL, request_id INTEGER, outcome TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', "
        "seen_at TEXT NOT NULL, PRIMARY KEY (bucket, object_key, etag))"
    )


def _obligations(tx: Transaction) -> None:
    """A request's deadline, the record of its escalation ladder, a person's overrides for its next attempts,
    and the decisions people took on it (approve, cancel, retry), each with who, when and why."""
    present = tx.columns("requests")
    for name, kind in (
        ("due_at", "TEXT"),
        ("attempt_log", "TEXT NOT NULL DEFAULT '[]'"),
        ("overrides", "TEXT NOT NULL DEFAULT '{}'"),
        ("ladder_start", "INTEGER NOT NULL DEFAULT 1"),
    ):
        if name not in present:
            tx.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
    key = "id INTEGER PRIMARY KEY AUTOINCREMENT" if tx.kind == "sqlite" else "id BIGSERIAL PRIMARY KEY"
    tx.execute(
        f"CREATE TABLE IF NOT EXISTS decisions ({key}, request_id INTEGER NOT NULL, action TEXT NOT NULL, "
        "version TEXT, by_user TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL "
        "DEFAULT '{}')"
    )


# (version, what it does, how): append only; a released migration never changes.
MIGRATIONS: list[tuple[int, str, Callable[[Transaction], None]]] = [
    (1, "the requests table and its state index", _requests_table),
    (2, "a request's own prompts and anchor prompts (JSON lists)", _request_prompts),
    (3, "the S3 inbox's record of the objects it has read", _inbox_objects),
    (4, "deadlines, the escalation ladder's attempt log, overrides and people's decisions", _obligations),
]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class QueueDatabase:
    """A queue location opened and migrated: `transaction()` yields a `Transaction`."""

    def __init__(self, location: str | Path, lock_wait_seconds: float = LOCK_WAIT_SECONDS):
        self.kind, self.target = parse_location(location)
        self.lock_wait_seconds = lock_wait_seconds
        if self.kind == "sqlite":
            self.path = Path(self.target)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    @property
    def location(self) -> str:
        """Where the queue is, safe to print (a PostgreSQL URL carries no password: see parse_location)."""
        return str(self.target)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.target, timeout=self.lock_wait_seconds, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                db.execute("BEGIN IMMEDIATE")  # SQLite's busy handler retries with backoff meanwhile
            except sqlite3.OperationalError as error:
                db.close()
                raise ServiceUnavailable(
                    f"the queue {self.target} stayed locked for {self.lock_wait_seconds:g} s ({error}); another "
                    "process holds a write transaction on it"
                ) from error
            try:
                yield Transaction(db, "sqlite")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite ends the transaction itself on some errors (a full disk)
                    db.execute("ROLLBACK")
                raise
            finally:
                db.close()
            return
        import psycopg
        from psycopg.rows import dict_row

        try:
            connection = psycopg.connect(self.target, row_factory=dict_row, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise ServiceUnavailable(f"the queue database {self.location} cannot be reached: {error}") from error
        with connection:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (QUEUE_LOCK,))
                yield Transaction(connection, "postgresql")

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; returns their versions."""
        with self.transaction() as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
            done = {row["version"] for row in tx.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, _, apply in MIGRATIONS:
                if version not in done:
                    apply(tx)  # each is idempotent, so a pre-migration queue file is brought up in place
                    tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, _now()))
                    applied.append(version)
        return applied

    def schema_version(self) -> int:
        with self.transaction() as tx:
            return max(row["version"] for row in tx.execute("SELECT version FROM schema_migrations"))


def parse_location(location: str | Path) -> tuple[str, str]:
    """("sqlite", file path) or ("postgresql", libpq URL). A PostgreSQL URL must not hold a password: libpq
    reads it from PGPASSWORD or ~/.pgpass, so it never sits in a settings file or a log line."""
    if isinstance(location, Path):
        return "sqlite", str(location)
    if location.startswith("sqlite:///"):
        return "sqlite", location[len("sqlite:///") :]  # sqlite:///relative, sqlite:////absolute
    if re.match(r"^postgres(ql)?://", location):
        parts = urlsplit(location)
        if parts.password is not None:
            raise QueueLocationError(
                "the queue URL holds a password; remove it and set PGPASSWORD or ~/.pgpass instead"
            )
        if not parts.hostname and "host=" not in parts.query:
            raise QueueLocationError(f"the queue URL names no host: {location!r}")
        return "postgresql", location
    if "://" in location:
        raise QueueLocationError(
            f"unknown queue location {location.split('://')[0]!r}://: use a SQLite file path, sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DB"
        )
    return "sqlite", location
