"""Fulfilling one claimed request: its attempts up the escalation ladder, inside one batch.

Each attempt runs as its plan says (tasks/steps/escalation.py) and is its own registered version (its own
MLflow run and replay sets, key `request-<id>-attempt-<n>`). The first attempt that passes its gates is
promoted and the request is done. A failed attempt never becomes production: it is appended to the request's
attempt log and the next attempt starts at once, while the ladder has rungs and budget left; then the request
ends failed with every attempt's reasons. Every transition is one queue transaction after the registry has
what it needs, so a batch killed at any point resumes the same attempt: a registered attempt is finished from
its record (flows/unlearn.finish_registered), never trained twice, and none is skipped.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

from lethe.tasks.model_sources import generator_kind
from lethe.tasks.outages import is_outage, outage_reason
from lethe.tasks.steps.escalation import AttemptPlan, max_attempts, plan_attempt
from lethe.tasks.stores.queue import Request


class Interrupted(Exception):
    """An outage stopped the attempt; the request waits (pending, same attempt) and the batch stops."""

    def __init__(self, report: dict):
        super().__init__(report["reasons"][0])
        self.report = report


Step = Callable  # flows.unlearn.unlearn_request: (ctx, request, plan) -> the attempt's report


def plan_of(ctx, request: Request, hardened: bool) -> AttemptPlan:
    """The running attempt's plan, from the request's record (so a resumed attempt gets the same one);
    `hardened`: whether the recovery rung applies to this model (`hardenable`)."""
    earlier = [r.get("anchor") for r in request.attempt_log if r.get("attempt", 0) >= request.ladder_start]
    s = ctx.settings
    return plan_attempt(
        request.attempts,
        request.ladder_start,
        request.anchor,
        request.overrides,
        earlier,
        s.train.steps,
        s.adapter.intensity,
        s.escalation,
        rounds=s.train.adversarial.rounds,
        hardenable=hardened,
    )


def hardenable(ctx) -> bool:
    """Whether the recovery rung applies: adversarial rows exist for class-conditional models only. The kind
    is the production version's (its `generator_kind` tag; versions from before the tag are class-conditional),
    what the attempt trains on, so a worker never needs the base's folder for it."""
    production = ctx.registry.production()
    kind = production.tags.get("generator_kind", "class-conditional") if production is not None else None
    return (kind or generator_kind(ctx.settings.generator)) == "class-conditional"


def record_of(plan: AttemptPlan, report: dict, seconds: float) -> dict:
    """An attempt as the request's attempt log keeps it."""
    return {
        "attempt": plan.attempt,
        "rung": plan.rung,
        "why": plan.why,
        "changes": list(plan.changes),
        "anchor": report.get("anchor"),
        "steps": plan.steps,
        "intensity": plan.intensity,
        "adversarial_rounds": plan.adversarial_rounds,
        "version": report.get("version"),
        "passed": bool(report.get("promoted")),
        "reasons": list(report.get("reasons", [])),
        "seconds": round(seconds, 1),
    }


def ladder_seconds(request: Request) -> float:
    """Wall time the current ladder's finished attempts took."""
    return sum(r.get("seconds", 0.0) for r in request.attempt_log if r.get("attempt", 0) >= request.ladder_start)


def ladder_log(request: Request, record: dict | None = None) -> list[dict]:
    """The current ladder's attempts, with `record` (the attempt that just ended) in its place."""
    log = [r for r in request.attempt_log if r.get("attempt", 0) >= request.ladder_start]
    if record is not None:
        log = [r for r in log if r.get("attempt") != record["attempt"]] + [record]
    return log


def adversarial_note(record: dict) -> str:
    rounds = record.get("adversarial_rounds", 0)  # absent from attempts logged before the recovery rung existed
    return f", {rounds} adversarial rounds" if rounds else ""


def every_reason(log: list[dict]) -> str:
    """A failed request's reasons: each attempt of its last ladder, what it tried and why it failed."""
    return " | ".join(
        f"attempt {r['attempt']} ({r['why']}; anchor {r.get('anchor') or '?'}, {r['steps']} steps, "
        f"intensity {r['intensity']:g}{adversarial_note(r)}): {'; '.join(r['reasons']) or 'failed'}"
        for r in log
    )


def attempt(ctx, request: Request, plan: AttemptPlan, step: Step, logger) -> dict:
    """One attempt's report. An error in the step is the attempt's failure (with the error as its reason); an
    outage raises Interrupted after putting the request back to pending."""
    try:
        return step(ctx, request, plan)
    except Exception as error:
        if is_outage(error):  # not the request's fault: it waits, and the batch stops (order is kept)
            reason = outage_reason(error)
            logger.error("request %s stopped by an outage:\n%s", request.id, traceback.format_exc())
            ctx.queue.release(request.id, reason)
            raise Interrupted(
                {
                    "request_id": request.id,
                    "concept": request.concept,
                    "attempt": plan.attempt,
                    "promoted": False,
                    "reasons": [f"waiting: {reason}"],
                    "interrupted": True,
                }
            ) from error
        logger.error("request %s, attempt %s failed:\n%s", request.id, plan.attempt, traceback.format_exc())
        return {
            "request_id": request.id,
            "concept": request.concept,
            "attempt": plan.attempt,
            "promoted": False,
            "reasons": [f"error: {type(error).__name__}: {error}"],
            "error": True,
        }


def fulfil(ctx, request: Request, step: Step, logger) -> tuple[Request, list[dict]]:
    """Attempts at a claimed (running) request, each one `step` (the batch's own unlearn_request flow: a
    deployment loads the flow module from source, so the batch hands over its own function and Context class),
    until one passes or the ladder ends; returns the request as it ended (done or failed) and every attempt's
    report. Raises Interrupted on an outage."""
    reports = []
    escalation = ctx.settings.escalation
    hardened = hardenable(ctx)  # production changes only when an attempt passes, and then the ladder ends
    while True:
        try:
            plan = plan_of(ctx, request, hardened)
        except ValueError as beyond:  # the settings shrank the ladder under a resumed request
            return ctx.queue.fail(request.id, f"{every_reason(ladder_log(request))} | {beyond}".strip(" |")), reports
        logger.info("request %s, attempt %s: %s", request.id, plan.attempt, plan.why)
        started = time.monotonic()
        report = attempt(ctx, request, plan, step, logger)
        record = record_of(plan, report, time.monotonic() - started)
        reports.append({**report, "why": plan.why})
        if report["promoted"]:
            done = ctx.queue.complete(request.id, report["version"], anchor=report.get("anchor"), record=record)
            return done, reports
        limit = max_attempts(plan.anchor is not None, escalation, hardened)
        spent = ladder_seconds(request) + record["seconds"]
        more = not report.get("error") and plan.rung + 1 < limit and spent < escalation.budget_minutes * 60
        if more:
            request = ctx.queue.escalate(request.id, record)
            continue
        ended = (
            "an error is not retried"
            if report.get("error")
            else (
                f"the ladder's {limit} attempt(s) are used"
                if plan.rung + 1 >= limit
                else f"its budget of {escalation.budget_minutes:g} min is spent ({spent / 60:.1f} min)"
            )
        )
        reasons = f"{every_reason(ladder_log(request, record))} | no further attempt: {ended}"
        return ctx.queue.fail(request.id, reasons, version=report.get("version"), record=record), reports
