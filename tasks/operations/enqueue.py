"""Enqueue one deletion request with every check a request gets, whoever sends it (the CLI, the S3 inbox)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from lethe.tasks.stores.queue import Request, RequestQueue, RequestRefused


def enqueue(
    queue: RequestQueue,
    generator,
    concept: str,
    anchor: str | None = None,
    note: str = "",
    prompts: Iterable[str] = (),
    anchor_prompts: Iterable[str] = (),
    origin: tuple[str, str, str] | None = None,
    *,
    due_at: str | None = None,
    deadline_days: int,
) -> Request:
    """The queued request; RequestRefused (with the reason) when it must not enter the queue. It is due at
    `due_at` (ISO), or `deadline_days` (deadlines.days) after now."""
    prompts, anchor_prompts = tuple(prompts), tuple(anchor_prompts)
    if (prompts or anchor_prompts) and not hasattr(generator, "prompts_of"):
        raise RequestRefused(
            "prompts and anchor prompts are for text-to-image workspaces; this one is class-conditional"
        )
    return queue.add(
        concept,
        anchor,
        note,
        known=generator.concepts,
        forgotten=queue.forgotten(),
        prompts=prompts,
        anchor_prompts=anchor_prompts,
        origin=origin,
        due_at=due_at or (datetime.now(timezone.utc) + timedelta(days=deadline_days)).isoformat(timespec="seconds"),
    )
