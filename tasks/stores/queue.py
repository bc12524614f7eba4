"""The durable queue of deletion requests (SQLite): pending -> running -> done | failed.

A rollback moves done requests to rolled_back (and a roll-forward back to done); failed and rolled_back
requests can be re-queued (back to pending, a new attempt).

A request names its concept and, optionally, its anchor; for a text-to-image workspace it may also give the
prompts to unlearn (instead of the concept file's) and the prompts to steer them to (instead of the anchor's).
They are stored as JSON lists. Where the queue lives (a SQLite file, or PostgreSQL for several machines) and its
versioned schema are `queue_database.py`'s concern; this file is the state machine, the same on both.

Requests are taken strictly in id order, one at a time, and every transition is one transaction, so a crash
leaves a request either where it was or `running`; `recover()` puts interrupted requests back to pending
(to resume the same attempt) before a new batch starts. Invalid requests are refused when they are added,
with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lethe.tasks.stores.queue_database import LOCK_WAIT_SECONDS, QueueDatabase

PENDING, RUNNING, DONE, FAILED, ROLLED_BACK = "pending", "running", "done", "failed", "rolled_back"
STATES = (PENDING, RUNNING, DONE, FAILED, ROLLED_BACK)

PROMPT_COLUMNS = ("prompts", "anchor_prompts")  # JSON lists
MAX_PROMPTS, MAX_PROMPT_CHARS = 16, 200  # so a request's prompts fit an MLflow tag
MAX_NOTE_CHARS = 2000  # a ticket reference or a sentence of why; it is copied into tags and certificates


class RequestRefused(ValueError):
    """A request that must not enter the queue; the message says why."""


class InvalidTransition(RuntimeError):
    """A state change the queue's state machine does not allow."""


@dataclass(frozen=True)
class Request:
    id: int
    concept: str
    anchor: str | None
    note: str
    state: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    version: str | None
    reasons: str
    prompts: tuple[str, ...] = ()
    anchor_prompts: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def check_prompts(prompts, what: str) -> tuple[str, ...]:
    """Prompts a request may carry: non-empty single-line text, at most MAX_PROMPTS of MAX_PROMPT_CHARS."""
    prompts = tuple(prompts)
    if len(prompts) > MAX_PROMPTS:
        raise RequestRefused(f"at most {MAX_PROMPTS} {what} per request, got {len(prompts)}")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise RequestRefused(f"{what} must be non-empty text, got {p!r}")
        if len(p) > MAX_PROMPT_CHARS or any(ord(ch) < 32 for ch in p):
            raise RequestRefused(f"{what} must be one line of at most {MAX_PROMPT_CHARS} characters: {p[:40]!r}")
    if len(set(prompts)) != len(prompts):
        raise RequestRefused(f"{what} repeat a prompt")
    return prompts


def check_note(note) -> str:
    """A request's note: text of at most MAX_NOTE_CHARS, no control characters but newline and tab."""
    if not isinstance(note, str):
        raise RequestRefused(f"the note must be text, got {type(note).__name__}")
    if len(note) > MAX_NOTE_CHARS:
        raise RequestRefused(f"the note has {len(note)} characters; at most {MAX_NOTE_CHARS}")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in note):
        raise RequestRefused(f"the note holds a control character: {note[:40]!r}")
    return note


INBOX_OBJECT = "bucket = ? AND object_key = ? AND etag = ?"  # an inbox object's key: (bucket, key, ETag)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RequestQueue:
    """The queue at `location`: a SQLite file path (or sqlite:///PATH), or a postgresql:// URL."""

    def __init__(self, location: str | Path, lock_wait_seconds: float = LOCK_WAIT_SECONDS):
        self.database = QueueDatabase(location, lock_wait_seconds)
        self.path = getattr(self.database, "path", None)  # the SQLite file, when it is one

    def _transaction(self):
        return self.database.transaction()

    @staticmethod
    def _row(row) -> Request:
        fields = {k: row[k] for k in row.keys()}
        for name in PROMPT_COLUMNS:
            fields[name] = tuple(json.loads(fields[name]))
        return Request(**fields)

    def add(
        self,
        concept: str,
        anchor: str | None = None,
        note: str = "",
        known: Iterable[str] = (),
        forgotten: Iterable[str] = (),
        prompts: Iterable[str] = (),
        anchor_prompts: Iterable[str] = (),
        origin: tuple[str, str, str] | None = None,
    ) -> Request:
        """Enqueue a request after checking it against the known and already-forgotten concepts; `prompts` and
        `anchor_prompts` (text-to-image only: the caller knows the workspace's kind) replace the concept
        file's prompts of the concept and of the anchor for this request's unlearning. `origin` (bucket, key,
        ETag of an inbox object) is recorded in the same transaction, so an object enters the queue once."""
        known, forgotten, note = list(known), set(forgotten), check_note(note)
        prompts, anchor_prompts = check_prompts(prompts, "prompts"), check_prompts(anchor_prompts, "anchor prompts")
        if set(prompts) & set(anchor_prompts):
            raise RequestRefused("a prompt cannot be both one to unlearn and one to steer to")
        if known and concept not in known:
            raise RequestRefused(f"unknown concept {concept!r}; known concepts: {', '.join(known)}")
        if anchor is not None:
            if anchor == concept:
                raise RequestRefused(f"the anchor must differ from the concept ({concept!r} -> {anchor!r})")
            if known and anchor not in known:
                raise RequestRefused(f"unknown anchor {anchor!r}; known concepts: {', '.join(known)}")
            if anchor in forgotten:
                raise RequestRefused(f"anchor {anchor!r} has been forgotten already; pick a retained concept")
        with self._transaction() as db:
            if (
                origin is not None
                and db.execute(f"SELECT 1 FROM inbox_objects WHERE {INBOX_OBJECT}", origin).fetchone()
            ):
                raise RequestRefused(f"inbox object {origin[1]} (ETag {origin[2]}) has been read already")
            if (
                concept in forgotten
                or db.execute("SELECT 1 FROM requests WHERE concept = ? AND state = ?", (concept, DONE)).fetchone()
            ):
                raise RequestRefused(f"concept {concept!r} is already forgotten by the production model")
            open_request = db.execute(
                "SELECT id FROM requests WHERE concept = ? AND state IN (?, ?)", (concept, PENDING, RUNNING)
            ).fetchone()
            if open_request:
                raise RequestRefused(f"concept {concept!r} is already queued as request {open_request['id']}")
            row = db.execute(
                "INSERT INTO requests (concept, anchor, note, created_at, prompts, anchor_prompts) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (concept, anchor, note, _now(), json.dumps(list(prompts)), json.dumps(list(anchor_prompts))),
            ).fetchall()[0]  # every row read before the commit
            if origin is not None:
                db.execute(
                    "INSERT INTO inbox_objects (bucket, object_key, etag, request_id, outcome, seen_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (*origin, row["id"], "queued", _now()),
                )
            return self._row(row)

    def inbox_outcome(self, origin: tuple[str, str, str]) -> dict | None:
        """What became of an inbox object already read: {"outcome", "request_id", "reason"}, or None."""
        with self._transaction() as db:
            row = db.execute(
                f"SELECT outcome, request_id, reason FROM inbox_objects WHERE {INBOX_OBJECT}", origin
            ).fetchone()
        return {k: row[k] for k in row.keys()} if row else None

    def refuse_inbox_object(self, origin: tuple[str, str, str], reason: str) -> None:
        """Record that an inbox object was refused (it never becomes a request), with the reason."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO inbox_objects (bucket, object_key, etag, outcome, reason, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*origin, "rejected", reason, _now()),
            )

    def get(self, request_id: int) -> Request:
        with self._transaction() as db:
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise KeyError(f"no request with id {request_id}")
        return self._row(row)

    def list(self, states: Iterable[str] | None = None) -> list[Request]:
        states = tuple(states or STATES)
        marks = ",".join("?" * len(states))
        with self._transaction() as db:
            rows = db.execute(f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [self._row(r) for r in rows]

    def forgotten(self) -> list[str]:
        return [r.concept for r in self.list([DONE])]

    def claim_next(self) -> Request | None:
        """Move the oldest pending request to running and return it (None when nothing is pending)."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM requests WHERE state = ?", (RUNNING,)).fetchone():
                raise InvalidTransition("a request is already running; run recover() after a crash")
            row = db.execute("SELECT * FROM requests WHERE state = ? ORDER BY id LIMIT 1", (PENDING,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE requests SET state = ?, started_at = ?, attempts = attempts + 1 WHERE id = ?",
                (RUNNING, _now(), row["id"]),
            )
            return self._row(db.execute("SELECT * FROM requests WHERE id = ?", (row["id"],)).fetchone())

    @staticmethod
    def _check_running(db, request_id: int) -> None:
        row = db.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise KeyError(f"no request with id {request_id}")
        if row["state"] != RUNNING:
            raise InvalidTransition(f"request {request_id} is {row['state']}, not running")

    def _finish(self, request_id: int, state: str, version: str | None, reasons: str, anchor: str | None) -> Request:
        with self._transaction() as db:
            self._check_running(db, request_id)
            db.execute(
                "UPDATE requests SET state = ?, finished_at = ?, version = ?, reasons = ?, "
                "anchor = COALESCE(?, anchor) WHERE id = ?",
                (state, _now(), version, reasons, anchor, request_id),
            )
        return self.get(request_id)

    def complete(self, request_id: int, version: str, anchor: str | None = None) -> Request:
        return self._finish(request_id, DONE, version, "", anchor)

    def fail(self, request_id: int, reasons: str, version: str | None = None, anchor: str | None = None) -> Request:
        return self._finish(request_id, FAILED, version, reasons, anchor)

    def _move(self, request_id: int, allowed: tuple[str, ...], state: str, **fields) -> Request:
        with self._transaction() as db:
            row = db.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                raise KeyError(f"no request with id {request_id}")
            if row["state"] not in allowed:
                raise InvalidTransition(
                    f"request {request_id} is {row['state']}; only {' or '.join(allowed)} requests can become {state}"
                )
            sets = ", ".join(f"{k} = ?" for k in ("state", *fields))
            db.execute(f"UPDATE requests SET {sets} WHERE id = ?", (state, *fields.values(), request_id))
        return self.get(request_id)

    def mark_rolled_back(self, request_id: int, reason: str) -> Request:
        return self._move(request_id, (DONE,), ROLLED_BACK, reasons=reason)

    def mark_restored(self, request_id: int) -> Request:
        """A roll-forward re-activated this request's version."""
        return self._move(request_id, (ROLLED_BACK,), DONE, reasons="")

    def requeue(self, request_id: int) -> Request:
        """Run a failed or rolled-back request again (its concept must not be forgotten or queued meanwhile)."""
        request = self.get(request_id)
        clash = [r for r in self.list([PENDING, RUNNING, DONE]) if r.concept == request.concept]
        if clash:
            raise RequestRefused(
                f"request {clash[0].id} for {request.concept!r} is {clash[0].state}; "
                f"not re-queueing request {request_id}"
            )
        return self._move(request_id, (FAILED, ROLLED_BACK), PENDING, started_at=None, finished_at=None)

    def release(self, request_id: int, reason: str) -> Request:
        """A running request whose step was stopped by an outage goes back to pending (the same attempt, to be
        resumed), with the reason, so the next batch takes it first."""
        with self._transaction() as db:
            self._check_running(db, request_id)
            db.execute(
                "UPDATE requests SET state = ?, started_at = NULL, attempts = attempts - 1, reasons = ? WHERE id = ?",
                (PENDING, f"waiting: {reason}", request_id),
            )
        return self.get(request_id)

    def recover(self) -> list[int]:
        """Put requests left `running` by a crashed batch back to pending; returns their ids. The interrupted
        attempt is not counted: the next claim resumes it under the same number, so it finds what that
        attempt registered (a version, replay sets) instead of making a second one."""
        with self._transaction() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM requests WHERE state = ?", (RUNNING,))]
            db.execute(
                "UPDATE requests SET state = ?, started_at = NULL, attempts = attempts - 1 WHERE state = ?",
                (PENDING, RUNNING),
            )
        return ids
