"""What a batch tells people: the summary (a Prefect table artefact and a notification), and the alerts sent at
once for a failed or overdue request, through the block `notify.block` names (tasks/notifications.py).

Messages carry what a person needs to act: which requests were done and which failed, the versions made, the
gate reasons, the flagged deadlines, and where to look in MLflow. They never carry a credential: the MLflow
address is shown with any password masked, and the notification URL lives only inside the Prefect block.
"""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from lethe.tasks.notifications import Delivery, notify_task
from lethe.tasks.operations.deadlines import Flag
from lethe.tasks.settings import NotifySettings, redacted
from lethe.tasks.stores.queue import Request


def mlflow_pointer(mlflow_uri: str, model_name: str) -> str:
    return f"MLflow {redacted(mlflow_uri)}, model {model_name} (Models -> {model_name} -> versions)"


def failed_message(request: Request, pointer: str) -> tuple[str, str]:
    """The alert for a request that ended failed, with every attempt's reasons."""
    lines = [
        f"Deletion request {request.id} ({request.concept}) FAILED after {len(request.attempt_log)} attempt(s).",
        f"Received {request.created_at}; due {request.due_at or '(default deadline)'}.",
        "",
    ]
    for r in request.attempt_log:
        verdict = "passed" if r.get("passed") else "; ".join(r.get("reasons", [])) or "failed"
        lines.append(
            f"- attempt {r['attempt']}: {r['why']}; anchor {r.get('anchor') or '?'}, version "
            f"{r.get('version') or '-'}: {verdict}"
        )
    lines += [
        "",
        "Decide: `lethe request approve ID --version V --reason TEXT`, `lethe request retry ID [--anchor A] "
        "[--steps N] --reason TEXT`, or `lethe request cancel ID --reason TEXT`.",
        pointer,
    ]
    return f"Lethe: request {request.id} ({request.concept}) failed", "\n".join(lines)


def overdue_message(flagged: list[Flag], pointer: str) -> tuple[str, str]:
    lines = [f"- request {f.request_id} ({f.concept}): {f.why}" for f in flagged]
    return f"Lethe: {len(flagged)} request(s) overdue or waiting", "\n".join([*lines, "", pointer])


def summary_rows(reports: list[dict], ended: dict[int, Request]) -> list[dict]:
    """One row per attempt or consolidation of the batch, as the table artefact shows them."""
    rows = []
    for r in reports:
        request = ended.get(r.get("request_id"))
        rows.append(
            {
                "request": r.get("request_id", "consolidation"),
                "concept": r.get("concept", "-"),
                "attempt": r.get("attempt", "-"),
                "why": r.get("why", r.get("trigger", "-")),
                "version": r.get("version") or "-",
                "result": "promoted"
                if r["promoted"]
                else ("waiting" if r.get("interrupted") else "rejected: " + "; ".join(r["reasons"])),
                "request_state": request.state if request else "-",
            }
        )
    return rows


def batch_message(reports: list[dict], ended: dict[int, Request], flagged: list[Flag], pointer: str) -> tuple[str, str]:
    done = [r for r in ended.values() if r.state == "done"]
    failed = [r for r in ended.values() if r.state == "failed"]
    attempts = sum(1 for r in reports if "attempt" in r)
    lines = [
        f"{len(done)} request(s) done, {len(failed)} failed, {attempts} attempt(s) in this batch.",
        "",
        *(f"- request {r.id} ({r.concept}): done, version {r.version} (attempt {r.attempts})" for r in done),
        *(f"- request {r.id} ({r.concept}): FAILED: {r.reasons[:500]}" for r in failed),
    ]
    if flagged:
        lines += ["", "Needs a person:", *(f"- request {f.request_id} ({f.concept}): {f.why}" for f in flagged)]
    lines += ["", pointer]
    subject = f"Lethe batch: {len(done)} done, {len(failed)} failed" + (f", {len(flagged)} flagged" if flagged else "")
    return subject, "\n".join(lines)


def alert(notify: NotifySettings, kind: str, message: tuple[str, str], logger) -> Delivery | None:
    """Send `message` if the settings ask for `kind` (batch, failed, overdue) and name a block; log the outcome
    (by block name only)."""
    if notify.block is None or not getattr(notify, kind):
        return None
    delivery = notify_task(notify.block, *message)
    if delivery.sent:
        logger.info("notified %s: %s", notify.block, delivery.subject)
    else:
        logger.error("notification through %s not delivered (%s): %s", notify.block, delivery.error, delivery.subject)
    return delivery


def table_artefact(reports: list[dict], ended: dict[int, Request], flagged: list[Flag]) -> None:
    """The batch summary as a Prefect table artefact (the flagged requests follow the attempts)."""
    rows = summary_rows(reports, ended) + [
        {
            "request": f.request_id,
            "concept": f.concept,
            "attempt": "-",
            "why": f"flagged: {f.kind}",
            "version": "-",
            "result": f.why,
            "request_state": f.state,
        }
        for f in flagged
    ]
    create_table_artifact(table=rows, key="lethe-batch-summary", description="Lethe batch: attempts and flags")
