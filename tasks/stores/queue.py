"""The durable queue of deletion requests (SQLite): pending -> running -> done | failed.

A running request may take several attempts (the escalation ladder, `flows/escalation.py`): each failed attempt
is appended to the request's attempt log and the next one starts without leaving `running`. A rollback moves done
requests to rolled_back (and a roll-forward back to done). A person decides on the rest, and every decision is
kept in the `decisions` table with who, when and why: a failed request can be approved (done with one of its
attempts' versions), cancelled, or retried (back to pending, a new ladder, optionally with another anchor or
more training steps); a pending one can be cancelled.

Every request carries a deadline (`due_at`), set when it is added.

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lethe.tasks.stores.queue_database import LOCK_WAIT_SECONDS, QueueDatabase

PENDING, RUNNING, DONE, FAILED, ROLLED_BACK = "pending", "running", "done", "failed", "rolled_back"
CANCELLED = "cancelled"
STATES = (PENDING, RUNNING, DONE, FAILED, ROLLED_BACK, CANCELLED)
OPEN = (PENDING, RUNNING)  # an obligation not yet met

PROMPT_COLUMNS = ("prompts", "anchor_prompts")  # JSON lists
JSON_COLUMNS = ("attempt_log", "overrides")  # a JSON list of finished attempts, a JSON object
OVERRIDES = ("anchor", "steps")  # what a person's retry may set for the next attempts
MAX_REASON_CHARS = 2000
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
    due_at: str | None = None
    attempt_log: tuple[dict, ...] = ()  # the finished attempts: attempt, version, change, reasons, seconds
    overrides: dict = field(default_factory=dict)  # a person's retry: anchor and/or steps
    ladder_start: int = 1  # the attempt number where the current ladder began (a person's retry starts one)

    @property
    def rung(self) -> int:
        """The current attempt's place on its ladder: 0 for the first attempt as asked, 1 for the first change."""
        return self.attempts - self.ladder_start

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Decision:
    """A person's decision on a request, as the queue keeps it."""

    id: int
    request_id: int
    action: str  # approve | cancel | retry
    version: str | None
    by_user: str
    at: str
    reason: str
    details: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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


def check_reason(reason) -> str:
    """A decision's reason: required, one paragraph of text."""
    if not isinstance(reason, str) or not reason.strip():
        raise RequestRefused("a decision needs a reason (--reason TEXT): it is kept on record")
    if len(reason) > MAX_REASON_CHARS or any(ord(ch) < 32 and ch not in "\n\t" for ch in reason):
        raise RequestRefused(f"the reason must be text of at most {MAX_REASON_CHARS} characters")
    return reason.strip()


def check_due(due_at: str) -> str:
    """A deadline: an ISO 8601 time with a zone (or a date, read as its midnight UTC), not in the past."""
    try:
        moment = datetime.fromisoformat(due_at)
    except (TypeError, ValueError):
        raise RequestRefused(f"the due date must be an ISO date or time, e.g. 2027-01-31, got {due_at!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment < datetime.now(timezone.utc):
        raise RequestRefused(f"the due date {due_at} is already past")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


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
        fields["attempt_log"] = tuple(json.loads(fields["attempt_log"]))
        fields["overrides"] = json.loads(fields["overrides"])
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
        due_at: str | None = None,
    ) -> Request:
        """Enqueue a request after checking it against the known and already-forgotten concepts; `due_at` (ISO,
        not past) is its deadline, which the caller sets from `deadlines.days` when the request names none;
        `prompts` and
        `anchor_prompts` (text-to-image only: the caller knows the workspace's kind) replace the concept
        file's prompts of the concept and of the anchor for this request's unlearning. `origin` (bucket, key,
        ETag of an inbox object) is recorded in the same transaction, so an object enters the queue once."""
        known, forgotten, note = list(known), set(forgotten), check_note(note)
        due_at = check_due(due_at) if due_at is not None else None
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
                "INSERT INTO requests (concept, anchor, note, created_at, prompts, anchor_prompts, due_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (concept, anchor, note, _now(), json.dumps(list(prompts)), json.dumps(list(anchor_prompts)), due_at),
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

    @staticmethod
    def _logged(db, request_id: int, record: dict | None) -> str:
        """The attempt log with `record` (the attempt that just ended) appended, once per attempt number."""
        row = db.execute("SELECT attempt_log FROM requests WHERE id = ?", (request_id,)).fetchone()
        log = json.loads(row["attempt_log"])
        if record is not None:
            log = [r for r in log if r.get("attempt") != record.get("attempt")] + [record]
        return json.dumps(log)

    def _finish(
        self,
        request_id: int,
        state: str,
        version: str | None,
        reasons: str,
        anchor: str | None,
        record: dict | None = None,
    ) -> Request:
        with self._transaction() as db:
            self._check_running(db, request_id)
            db.execute(
                "UPDATE requests SET state = ?, finished_at = ?, version = ?, reasons = ?, "
                "anchor = COALESCE(?, anchor), attempt_log = ? WHERE id = ?",
                (state, _now(), version, reasons, anchor, self._logged(db, request_id, record), request_id),
            )
        return self.get(request_id)

    def complete(self, request_id: int, version: str, anchor: str | None = None, record: dict | None = None) -> Request:
        return self._finish(request_id, DONE, version, "", anchor, record)

    def fail(
        self,
        request_id: int,
        reasons: str,
        version: str | None = None,
        anchor: str | None = None,
        record: dict | None = None,
    ) -> Request:
        return self._finish(request_id, FAILED, version, reasons, anchor, record)

    def escalate(self, request_id: int, record: dict) -> Request:
        """The running attempt failed and the ladder goes on: log it and start the next attempt (still running)."""
        with self._transaction() as db:
            self._check_running(db, request_id)
            db.execute(
                "UPDATE requests SET attempts = attempts + 1, started_at = ?, attempt_log = ?, reasons = ? "
                "WHERE id = ?",
                (_now(), self._logged(db, request_id, record), f"attempt {record.get('attempt')} failed", request_id),
            )
        return self.get(request_id)

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
        """Run a failed or rolled-back request again (its concept must not be forgotten or queued meanwhile),
        from the first rung of a new ladder."""
        request = self.get(request_id)
        clash = [r for r in self.list([PENDING, RUNNING, DONE]) if r.concept == request.concept]
        if clash:
            raise RequestRefused(
                f"request {clash[0].id} for {request.concept!r} is {clash[0].state}; "
                f"not re-queueing request {request_id}"
            )
        return self._move(
            request_id,
            (FAILED, ROLLED_BACK),
            PENDING,
            started_at=None,
            finished_at=None,
            ladder_start=request.attempts + 1,
        )

    def _decide(self, db, request_id: int, action: str, version, by: str, reason: str, details: dict) -> None:
        db.execute(
            "INSERT INTO decisions (request_id, action, version, by_user, at, reason, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, action, version, by, _now(), reason, json.dumps(details)),
        )

    def _state_of(self, db, request_id: int) -> str:
        row = db.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise KeyError(f"no request with id {request_id}")
        return row["state"]

    def cancel(self, request_id: int, reason: str, by: str) -> Request:
        """A person withdraws a pending or failed request: it is never run again, and the decision is kept."""
        reason = check_reason(reason)
        with self._transaction() as db:
            state = self._state_of(db, request_id)
            if state not in (PENDING, FAILED):
                raise InvalidTransition(
                    f"request {request_id} is {state}; only pending or failed requests can be cancelled"
                )
            db.execute(
                "UPDATE requests SET state = ?, finished_at = ?, reasons = ? WHERE id = ?",
                (CANCELLED, _now(), f"cancelled by {by}: {reason}", request_id),
            )
            self._decide(db, request_id, "cancel", None, by, reason, {"from_state": state})
        return self.get(request_id)

    def retry(self, request_id: int, overrides: dict, reason: str, by: str) -> Request:
        """A person sends a failed, cancelled or rolled-back request back to pending for a new ladder, with
        `overrides` (anchor, steps) for its attempts; refused while its concept is queued or forgotten."""
        reason = check_reason(reason)
        unknown = set(overrides) - set(OVERRIDES)
        if unknown:
            raise RequestRefused(f"a retry can set {', '.join(OVERRIDES)}, not {', '.join(sorted(unknown))}")
        request = self.get(request_id)
        with self._transaction() as db:
            state = self._state_of(db, request_id)
            if state not in (FAILED, CANCELLED, ROLLED_BACK):
                raise InvalidTransition(
                    f"request {request_id} is {state}; only failed, cancelled or rolled-back requests can be retried"
                )
            clash = db.execute(
                "SELECT id, state FROM requests WHERE concept = ? AND id <> ? AND state IN (?, ?, ?)",
                (request.concept, request_id, PENDING, RUNNING, DONE),
            ).fetchone()
            if clash:
                raise RequestRefused(
                    f"request {clash['id']} for {request.concept!r} is {clash['state']}; not retrying {request_id}"
                )
            db.execute(
                "UPDATE requests SET state = ?, started_at = NULL, finished_at = NULL, overrides = ?, "
                "ladder_start = attempts + 1, reasons = ? WHERE id = ?",
                (PENDING, json.dumps(overrides), f"retry by {by}: {reason}", request_id),
            )
            self._decide(db, request_id, "retry", None, by, reason, {"from_state": state, "overrides": overrides})
        return self.get(request_id)

    def approve(self, request_id: int, version: str, reason: str, by: str, details: dict) -> Request:
        """A person accepts a failed request's rejected attempt: done with `version` (the caller has checked that
        it is one of this request's attempts and promoted it); `details` keeps the gate numbers shown."""
        reason = check_reason(reason)
        with self._transaction() as db:
            state = self._state_of(db, request_id)
            if state != FAILED:
                raise InvalidTransition(f"request {request_id} is {state}; only a failed request can be approved")
            db.execute(
                "UPDATE requests SET state = ?, version = ?, finished_at = ?, reasons = ? WHERE id = ?",
                (DONE, version, _now(), f"approved by {by}: {reason}", request_id),
            )
            self._decide(db, request_id, "approve", version, by, reason, details)
        return self.get(request_id)

    def decisions(self, request_id: int | None = None) -> list[Decision]:
        """People's decisions, oldest first (of one request, or all)."""
        where, params = ("WHERE request_id = ?", (request_id,)) if request_id is not None else ("", ())
        with self._transaction() as db:
            rows = db.execute(f"SELECT * FROM decisions {where} ORDER BY id", params).fetchall()
        return [Decision(**{**{k: r[k] for k in r.keys()}, "details": json.loads(r["details"])}) for r in rows]

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
