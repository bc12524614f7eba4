"""Deadlines of deletion requests: when each is due, how old it is, and which need a person's attention.

A request is due `deadlines.days` after it arrived unless it named its own date (`lethe request add --due`).
Flagged: a failed request (until a person approves, retries or cancels it), an open request past its due date,
and one still pending or running after `deadlines.flag_pending_days`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lethe.tasks.settings import DeadlineSettings
from lethe.tasks.stores.queue import FAILED, OPEN, Request


@dataclass(frozen=True)
class Flag:
    request_id: int
    concept: str
    state: str
    kind: str  # failed | overdue | waiting
    why: str


def when(moment: str) -> datetime:
    parsed = datetime.fromisoformat(moment)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def hours_since(moment: str, now: datetime | None = None) -> float:
    """Hours from an ISO time (a request's arrival) to `now`."""
    return ((now or datetime.now(timezone.utc)) - when(moment)).total_seconds() / 3600


def due_of(request: Request, deadlines: DeadlineSettings) -> datetime:
    """The request's own due date, or its arrival plus `deadlines.days`."""
    return when(request.due_at) if request.due_at else when(request.created_at) + timedelta(days=deadlines.days)


def age_days(request: Request, now: datetime) -> float:
    return (now - when(request.created_at)).total_seconds() / 86400


def flags(requests: list[Request], deadlines: DeadlineSettings, now: datetime | None = None) -> list[Flag]:
    """What needs a person, most urgent kinds first: failed, then overdue, then waiting long."""
    now = now or datetime.now(timezone.utc)
    out = []
    for r in requests:
        due = due_of(r, deadlines)
        if r.state == FAILED:
            out.append(Flag(r.id, r.concept, r.state, "failed", f"failed; due {due:%Y-%m-%d}: {r.reasons[:300]}"))
        elif r.state in OPEN and now > due:
            out.append(Flag(r.id, r.concept, r.state, "overdue", f"{r.state} and overdue since {due:%Y-%m-%d %H:%M}"))
        elif r.state in OPEN and age_days(r, now) > deadlines.flag_pending_days:
            out.append(
                Flag(
                    r.id,
                    r.concept,
                    r.state,
                    "waiting",
                    f"{r.state} for {age_days(r, now):.0f} days; due {due:%Y-%m-%d}",
                )
            )
    order = {"failed": 0, "overdue": 1, "waiting": 2}
    return sorted(out, key=lambda f: (order[f.kind], f.request_id))
