"""A person's decisions on a request the pipeline could not fulfil: approve one of its rejected attempts, cancel
it, or retry it. Each is checked before anything changes, kept in the queue's `decisions` table (who, when,
why) and tagged on the versions it touches (`decision.<id>`), so `lethe lineage`, `lethe show` and the
certificate show it.
"""

from __future__ import annotations

from lethe.tasks.operations.deadlines import hours_since
from lethe.tasks.stores.queue import DONE, FAILED, Decision, RequestQueue, RequestRefused, check_reason
from lethe.tasks.stores.registry import Registry

GATE_NUMBERS = (
    "metric.forget_acc_max",
    "metric.held_out_forget_acc_max",
    "metric.retain_acc_mean",
    "metric.kid",
)


def decision_tag(decision: Decision) -> dict[str, str]:
    verb = {"approve": "approved", "cancel": "cancelled", "retry": "retried"}[decision.action]
    return {f"decision.{decision.id}": f"{verb} by {decision.by_user} at {decision.at}: {decision.reason}"}


def gate_numbers(tags: dict) -> dict[str, str]:
    """What the gates measured on an attempt, and why they rejected it."""
    numbers = {k.removeprefix("metric."): tags[k] for k in GATE_NUMBERS if k in tags}
    numbers.update({k: v for k, v in tags.items() if k.startswith("recovery.") and k != "recovery.budget"})
    numbers["gate_reasons"] = tags.get("gate_reasons", "")
    return numbers


def attempts_of(registry: Registry, request_id: int) -> list:
    """The registered versions of a request's attempts, oldest first."""
    return [
        v
        for v in registry.versions()
        if v.tags.get("request_id") == str(request_id) and v.tags.get("kind") == "unlearning-step"
    ]


def check_approval(queue: RequestQueue, registry: Registry, request_id: int, version: str) -> dict:
    """Refuse (RequestRefused, with why) unless `version` is a rejected attempt of the failed request
    `request_id` that can become production now (production is still its parent); returns its gate numbers."""
    request = queue.get(request_id)
    if request.state == DONE:
        raise RequestRefused(f"request {request_id} is done already (version {request.version}); nothing to approve")
    if request.state != FAILED:
        raise RequestRefused(f"request {request_id} is {request.state}; only a failed request can be approved")
    attempts = {str(v.version): v for v in attempts_of(registry, request_id)}
    if str(version) not in attempts:
        raise RequestRefused(
            f"version {version} is not an attempt of request {request_id}; its attempts are "
            f"{', '.join(attempts) or 'none'}"
        )
    tags = attempts[str(version)].tags
    production = registry.production()
    if str(production.version) != tags.get("parent_version"):
        raise RequestRefused(
            f"version {version} was built on version {tags.get('parent_version')}, but production is version "
            f"{production.version} now: approving it would undo what came since. Retry the request instead "
            f"(`lethe request retry {request_id} --reason ...`)"
        )
    return gate_numbers(tags)


def approve(
    queue: RequestQueue, registry: Registry, request_id: int, version: str, reason: str, by: str
) -> tuple[Decision, dict]:
    """Promote a rejected attempt by hand; the request is done with it. Returns the decision and the gate
    numbers it overrode."""
    reason = check_reason(reason)
    numbers = check_approval(queue, registry, request_id, version)
    request, before = queue.get(request_id), str(registry.production().version)
    registry.promote(str(version))
    try:
        queue.approve(request_id, str(version), reason, by, {"gate_numbers": numbers})
    except Exception:
        registry.promote(before)  # the queue refused (another decision came first): production as it was
        raise
    decision = queue.decisions(request_id)[-1]
    registry.set_tags(
        str(version),
        {"approved_by": by, "approved_at": decision.at, "approved_reason": reason[:500], **decision_tag(decision)},
    )
    registry.log_metric(str(version), "request_to_production_hours", hours_since(request.created_at))
    return decision, numbers


def tag_latest_attempt(registry: Registry, request_id: int, decision: Decision) -> str | None:
    """Tag the request's latest registered attempt (if any) with the decision; returns its version."""
    attempts = attempts_of(registry, request_id)
    if not attempts:
        return None
    latest = max(attempts, key=lambda v: int(v.version))
    registry.set_tags(str(latest.version), decision_tag(decision))
    return str(latest.version)


def cancel(queue: RequestQueue, registry: Registry, request_id: int, reason: str, by: str) -> Decision:
    queue.cancel(request_id, reason, by)
    decision = queue.decisions(request_id)[-1]
    tag_latest_attempt(registry, request_id, decision)
    return decision


def retry(
    queue: RequestQueue, registry: Registry, request_id: int, overrides: dict, reason: str, by: str, known: list[str]
) -> Decision:
    """Back to pending for a new ladder; `overrides` may fix the anchor (a known, retained concept other than the
    request's) and the training steps."""
    request = queue.get(request_id)
    anchor = overrides.get("anchor")
    if anchor is not None:
        if anchor == request.concept or (known and anchor not in known):
            raise RequestRefused(f"anchor {anchor!r} must be a known concept other than {request.concept!r}")
        if anchor in queue.forgotten():
            raise RequestRefused(f"anchor {anchor!r} has been forgotten already; pick a retained concept")
    if "steps" in overrides and (not isinstance(overrides["steps"], int) or overrides["steps"] < 1):
        raise RequestRefused(f"steps must be a positive whole number, got {overrides['steps']!r}")
    queue.retry(request_id, overrides, reason, by)
    decision = queue.decisions(request_id)[-1]
    tag_latest_attempt(registry, request_id, decision)
    return decision
