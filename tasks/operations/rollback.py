"""Rollback (and roll-forward): move the `production` alias to another version that passed its gates.

Nothing is deleted. The versions whose steps are undone are tagged `rolled_back` with who, why and when, and
their requests move to `rolled_back` in the queue (ready to be re-queued); rolling forward again restores both.
After the move, production is sampled with the fingerprint seed and compared with the fingerprint recorded
when the restored version was registered, so a restore is checked bit for bit.
"""

from __future__ import annotations

from datetime import datetime, timezone

from lethe.tasks.settings import FingerprintSettings, SamplingSettings
from lethe.tasks.steps.fingerprint import sample_fingerprint
from lethe.tasks.stores.queue import ROLLED_BACK, RequestQueue
from lethe.tasks.stores.registry import Registry


class RollbackRefused(ValueError):
    """A rollback target that must not become production; the message says why."""


def ancestors(registry: Registry, version: str):
    """The version and its ancestors as registry versions, newest first, down to the base; fetched one at a
    time, so a caller that has seen enough stops early."""
    seen, current = set(), str(version)
    while current:
        if current in seen:
            raise RuntimeError(f"lineage loop at version {current}")
        seen.add(current)
        registered = registry.version(current)
        yield registered
        current = registered.tags.get("parent_version", "")


def chain(registry: Registry, version: str) -> list[str]:
    """The version and its ancestors, newest first, down to the base."""
    return [str(v.version) for v in ancestors(registry, version)]


def pick_target(registry: Registry, to: str | None, steps: int | None) -> str:
    production = registry.production()
    if production is None:
        raise RollbackRefused("there is no production version yet")
    current = chain(registry, str(production.version))
    if (to is None) == (steps is None):
        raise RollbackRefused("give exactly one of --to VERSION or --steps N")
    if steps is not None:
        if steps < 1 or steps >= len(current):
            raise RollbackRefused(
                f"--steps must be between 1 and {len(current) - 1}: production {current[0]} has "
                f"{len(current) - 1} step(s) above the base"
            )
        return current[steps]
    try:
        target = registry.version(to)
    except KeyError:
        raise RollbackRefused(f"version {to!r} does not exist") from None
    if target.tags.get("gate") != "passed" and not target.tags.get("approved_by"):
        raise RollbackRefused(
            f"version {to} never passed its quality gates "
            f"({target.tags.get('gate_reasons') or 'not evaluated'}); it cannot be production"
        )
    if str(target.version) == current[0]:
        raise RollbackRefused(f"version {to} is already production")
    return str(target.version)


def move_production(
    registry: Registry,
    queue: RequestQueue,
    who: str,
    to: str | None,
    steps: int | None,
    reason: str,
    requeue: bool,
    fingerprint: FingerprintSettings | None,
    sampling: SamplingSettings,
) -> dict:
    """Move production; `who` is recorded with the reason. With `fingerprint`, production's samples are
    checked against the fingerprint recorded at registration (None skips the check)."""
    target = pick_target(registry, to, steps)
    before = chain(registry, str(registry.production().version))
    after = chain(registry, target)
    undone = [v for v in before if v not in after]
    redone = [v for v in after if v not in before]
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    why = reason or "(no reason given)"
    registry.promote(target)
    registry.set_tags(
        target, {"promoted_at": when, "promoted_by": who, "promoted_reason": why, "promoted_from": before[0]}
    )
    requests = {"rolled_back": [], "restored": [], "requeued": []}
    for version in undone:
        registry.set_tags(
            version,
            {
                "rolled_back": "true",
                "rolled_back_at": when,
                "rolled_back_by": who,
                "rolled_back_reason": why,
                "rolled_back_to": target,
            },
        )
        request_id = registry.version(version).tags.get("request_id")
        if request_id and queue.get(int(request_id)).state == "done":
            queue.mark_rolled_back(int(request_id), f"rolled back to version {target}: {why}")
            requests["rolled_back"].append(int(request_id))
    for version in redone:
        registry.set_tags(version, {"rolled_back": "false", "restored_at": when, "restored_by": who})
        request_id = registry.version(version).tags.get("request_id")
        if request_id and queue.get(int(request_id)).state == ROLLED_BACK:
            queue.mark_restored(int(request_id))
            requests["restored"].append(int(request_id))
    if requeue:
        for request_id in requests["rolled_back"]:
            queue.requeue(request_id)
            requests["requeued"].append(request_id)
    result = {
        "from": before[0],
        "to": target,
        "undone": undone,
        "redone": redone,
        "requests": requests,
        "who": who,
        "when": when,
        "reason": why,
        "verified": None,
    }
    recorded = registry.version(target).tags.get("sample_sha256")
    if fingerprint is not None and recorded:
        generator, adapters = registry.load(target)
        result["verified"] = sample_fingerprint(generator, adapters, fingerprint, sampling) == recorded
    return result
