"""Enqueue one deletion request with every check a request gets, whoever sends it (the CLI, the S3 inbox)."""

from __future__ import annotations

from collections.abc import Iterable

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
) -> Request:
    """The queued request; RequestRefused (with the reason) when it must not enter the queue."""
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
    )
