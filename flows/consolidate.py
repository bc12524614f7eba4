"""The consolidation step: production's adapter stack folded into one adapter per site, registered as a version.

It runs on demand (`lethe consolidate`) or inside a batch, after a promoted request leaves `consolidate.every`
requests unconsolidated. The new version's parent is the unconsolidated production version; it forgets exactly
what its parent forgets, and passes the same gates as a request's step, against that parent: every concept
forgotten so far stays forgotten (and under the recovery attack), retention and KID stay within the gates.
Its lineage names every adapter it folds and every request whose forgetting it carries. A registration key per
parent version makes it resumable and at most once per parent: a batch killed after registering finishes the
step from the registry, and a rejected consolidation is not retried on the same parent.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from lethe.flows.process import configure_process
from lethe.flows.progress import reporter
from lethe.flows.unlearn import (
    Context,
    attacker_images,
    batch_settings,
    cache_samples,
    evaluation_samples,
    forgotten_of,
    grid_file,
    log_lineage_plot,
    recovery_tags,
    samples_of,
    scored,
    summary_metrics,
)
from lethe.tasks.operations.anchor_confusions import lineage_confusions
from lethe.tasks.operations.consistency import check_agreement
from lethe.tasks.operations.rollback import ancestors
from lethe.tasks.steps.consolidate import consolidate_task
from lethe.tasks.steps.fingerprint import sample_fingerprint
from lethe.tasks.steps.gates import check_gates
from lethe.tasks.steps.recovery_audit import audit_recovery_task
from lethe.tasks.stores.batch_lock import batch_lock
from lethe.tasks.stores.registry import promote_task, register_version_task
from lethe.tasks.workspace import Workspace

KIND = "consolidation"


def consolidation_key(parent_version: str) -> str:
    return f"consolidate-{parent_version}"


class NothingToConsolidate(ValueError):
    """Production's stack holds fewer than two adapters."""


def unconsolidated_requests(ctx: Context, version: str) -> list[int]:
    """The requests whose adapters sit on top of the last consolidation (or the base) in `version`'s lineage,
    oldest first."""
    out = []
    for registered in ancestors(ctx.registry, version):
        if registered.tags.get("kind") != "unlearning-step":
            break
        out.append(int(registered.tags["request_id"]))
    return out[::-1]


def carried_requests(ctx: Context, version: str) -> list[int]:
    """Every request whose forgetting `version` carries: each request step in its lineage, oldest first."""
    tags = [v.tags for v in ancestors(ctx.registry, version)]
    return [int(t["request_id"]) for t in tags[::-1] if t.get("kind") == "unlearning-step"]


def consolidation_due(ctx: Context) -> bool:
    """`consolidate.every` requests sit unconsolidated on production, and its consolidation is not decided
    yet: none was registered, or one passed but was not promoted (its batch died). After a rejected
    consolidation the next try waits `consolidate.retry_after` requests: a fold that failed its gates on the
    parent before would most likely fail again, at the cost of a full fold every night."""
    every, retry_after = ctx.settings.consolidate.every, ctx.settings.consolidate.retry_after
    production = ctx.registry.production()
    if not every or production is None or len(unconsolidated_requests(ctx, production.version)) < every:
        return False
    registered = ctx.registry.by_key(consolidation_key(str(production.version)))
    if registered is not None:
        return registered.tags.get("gate") == "passed"
    return requests_since_rejected_consolidation(ctx, str(production.version)) >= retry_after


def requests_since_rejected_consolidation(ctx: Context, version: str) -> float:
    """How many request steps of `version`'s lineage came after the last consolidation rejected on one of its
    ancestors since the last kept one (infinity: none was rejected)."""
    for since, registered in enumerate(ancestors(ctx.registry, version)):
        if registered.tags.get("kind") != "unlearning-step":
            break
        tried = ctx.registry.by_key(consolidation_key(str(registered.version)))
        if tried is not None and tried.tags.get("gate") == "failed":
            return since
    return float("inf")


def finish_registered(ctx: Context, registered, parent) -> dict:
    """A consolidation of `parent` was registered before its process died: promote it if it passed and
    production is still its parent."""
    tags, version = registered.tags, str(registered.version)
    production = str(ctx.registry.production().version)
    promoted = tags.get("gate") == "passed" and production in (version, str(parent.version))
    if promoted and production != version:
        promote_task(ctx.registry, version)
    return {
        "consolidation": True,
        "version": version,
        "parent_version": str(parent.version),
        "promoted": promoted,
        "reasons": [r for r in tags.get("gate_reasons", "").split("; ") if r],
        "resumed": True,
    }


@flow(name="lethe-consolidate", log_prints=True)
def consolidate_production(ctx: Context, trigger: str) -> dict:
    """Consolidate production (the caller holds the batch lock); returns the step's summary."""
    s = ctx.settings
    parent = ctx.registry.production()
    if parent is None:
        raise NothingToConsolidate("there is no production version yet: run a batch first")
    registered = ctx.registry.by_key(consolidation_key(str(parent.version)))
    if registered is not None:
        return finish_registered(ctx, registered, parent)
    generator, stack = ctx.registry.load(parent.version)
    name = f"consolidated-v{parent.version}"
    forgotten = forgotten_of(parent)
    try:
        result = consolidate_task(
            generator,
            stack,
            name,
            s.adapter,
            s.consolidate,
            s.sampling,
            progress=reporter(f"consolidate version {parent.version}"),
            forgotten=tuple(forgotten),
            recovery=s.recovery,
        )
    except ValueError as error:
        if "nothing to consolidate" in str(error):
            raise NothingToConsolidate(f"production version {parent.version}: {error}") from None
        raise
    fitted = result.consolidated
    before = scored(ctx, samples_of(ctx, parent.version, bool(generator.paraphrased)), generator.concepts, forgotten)
    samples = evaluation_samples(ctx, generator, fitted.stack, f"consolidation of version {parent.version}: evaluate")
    after = scored(ctx, samples, generator.concepts, forgotten)
    after["recovery"] = audit_recovery_task(
        generator, fitted.stack, ctx.judge, forgotten, attacker_images(ctx), s.recovery, s.sampling
    )
    reasons = check_gates(after, before, s.gates, lineage_confusions(ctx.registry, str(parent.version)))
    requests = carried_requests(ctx, str(parent.version))
    tags = {
        "kind": KIND,
        "trigger": trigger,
        "parent_version": str(parent.version),
        "forgotten": ",".join(forgotten),
        "folded_adapters": ",".join(result.folded),
        "folded_requests": ",".join(map(str, requests)),
        "adapter_name": name,
        "adapter_sha256": fitted.stack.sha256([name]),
        "adapter_targets": ",".join(fitted.stack.slots[name].targets),
        "unexplained": json.dumps(fitted.unexplained),
        "gate": "failed" if reasons else "passed",
        "gate_reasons": "; ".join(reasons)[:4000],
        "rejected": "true" if reasons else "false",
        "eval_key": after["eval_key"],
        "trainable_params": fitted.trainable_params,
        "sample_sha256": sample_fingerprint(generator, fitted.stack, s.fingerprint, s.sampling),
        "metric.forget_acc_max": f"{after['forget_acc_max']:.4f}",
        "metric.retain_acc_mean": f"{after['retain_acc_mean']:.4f}",
        "metric.kid": f"{after['kid']:.4f}",
        "generator_kind": generator.kind,
        **recovery_tags(ctx, generator, after["recovery"]),
    }
    metrics = summary_metrics(after)
    metrics.update(
        {
            "before.forget_acc_max": before["forget_acc_max"],
            "before.retain_acc_mean": before["retain_acc_mean"],
            "before.kid": before["kid"],
            "trainable_params": fitted.trainable_params,
            "consolidate_seconds": result.seconds,
            "folded_adapters": len(result.folded),
            **{f"unexplained.{site}": v for site, v in fitted.unexplained.items()},
        }
    )
    if after["recovery"]:
        metrics["recovery_acc_max"] = max(after["recovery"].values())
    metrics = {k: v for k, v in metrics.items() if v == v}
    description = (
        f"Consolidation of version {parent.version} ({trigger}): {len(result.folded)} adapters "
        f"({', '.join(result.folded)}) folded into {name}, carrying requests {', '.join(map(str, requests))}. "
        f"Retained {before['retain_acc_mean']:.3f} -> {after['retain_acc_mean']:.3f}; worst forgotten "
        f"{before['forget_acc_max']:.3f} -> {after['forget_acc_max']:.3f}. Gates: {'; '.join(reasons) or 'passed'}."
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {"samples": grid_file(ctx, Path(tmp), *samples["main"], generator.concepts, forgotten, forgotten)}
        version = register_version_task(
            ctx.registry,
            key=consolidation_key(str(parent.version)),
            generator=generator,
            adapters=fitted.stack,
            sampling=s.sampling.model_dump(),
            run_name=f"consolidate-v{parent.version}",
            settings=s.model_dump(mode="json"),
            metrics=metrics,
            tags=tags,
            description=description,
            files=files,
        )
    cache_samples(ctx, version, samples)
    if not reasons:
        promote_task(ctx.registry, version)
    log_lineage_plot(ctx, version)
    summary = {
        "consolidation": True,
        "version": version,
        "parent_version": str(parent.version),
        "promoted": not reasons,
        "reasons": reasons,
        "folded_adapters": result.folded,
        "requests": requests,
        "unexplained": fitted.unexplained,
        "forget_acc_before": before["forget_acc_max"],
        "forget_acc_after": after["forget_acc_max"],
        "retain_acc_before": before["retain_acc_mean"],
        "retain_acc_after": after["retain_acc_mean"],
        "recovery_after": after["recovery"],
        "seconds": result.seconds,
    }
    get_run_logger().info(consolidation_summary_text(summary))
    return summary


@flow(name="lethe-consolidate-now", log_prints=True)
def consolidate_now(params_file: str = "params.yaml", workspace: str | None = None) -> dict:
    """`lethe consolidate`: under the batch lock (no batch runs meanwhile), consolidate production now."""
    settings = batch_settings(params_file, workspace)
    configure_process(settings, os.environ)
    ws = Workspace.open(settings)
    with batch_lock(ws.lock, ws.queue_location):
        ctx = Context.open(settings, ws)
        check_agreement(ctx.queue, ctx.registry)
        return consolidate_production(ctx, "on demand (lethe consolidate)")


def consolidation_summary_text(r: dict) -> str:
    """A consolidation's summary as the lines `lethe run` and `lethe consolidate` print."""
    if r.get("version") is None:
        return (
            f"consolidation of version {r['parent_version']} did not finish: {'; '.join(r['reasons'])}; "
            f"production stays version {r['parent_version']}"
        )
    if r.get("resumed"):
        verdict = "promoted" if r["promoted"] else "not promoted: " + ("; ".join(r["reasons"]) or "production moved")
        return f"consolidation of version {r['parent_version']}: resumed, version {r['version']} {verdict}"
    verdict = "promoted to production" if r["promoted"] else "REJECTED: " + "; ".join(r["reasons"])
    lines = [
        f"consolidation of version {r['parent_version']} = version {r['version']}, {verdict}",
        f"  folded {len(r['folded_adapters'])} adapters ({', '.join(r['folded_adapters'])}) into one, carrying "
        f"requests {', '.join(map(str, r['requests']))}; unexplained change per site: "
        + ", ".join(f"{site} {v:.3f}" for site, v in r["unexplained"].items()),
        f"  worst forgotten accuracy {r['forget_acc_before']:.3f} -> {r['forget_acc_after']:.3f}; "
        f"retained {r['retain_acc_before']:.3f} -> {r['retain_acc_after']:.3f}",
    ]
    if r.get("recovery_after"):
        lines.append(
            "  recovery attack, judged as the concept: "
            + ", ".join(f"{c} {a:.3f}" for c, a in r["recovery_after"].items())
        )
    return "\n".join(lines)
