"""The unlearning flows: a batch drains the queue in order; each request is one distill -> version data ->
train -> evaluate -> register -> gate -> promote step on top of the current production model.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from lethe.flows.alerts import alert, batch_message, failed_message, mlflow_pointer, overdue_message, table_artefact
from lethe.flows.deployment import replaced_schedule_reason
from lethe.flows.ladder import Interrupted, fulfil
from lethe.flows.process import configure_process
from lethe.flows.progress import reporter
from lethe.models.adapter_stack import AdapterStack
from lethe.tasks.images import concept_grid
from lethe.tasks.model_sources import check_judge_covers, open_generator, open_judge
from lethe.tasks.operations.anchor_confusions import confusion_tag, lineage_confusions, measure_anchor_confusion
from lethe.tasks.operations.consistency import check_agreement
from lethe.tasks.operations.deadlines import flags, hours_since
from lethe.tasks.operations.lineage import lineage
from lethe.tasks.operations.lineage_report import lineage_plot
from lethe.tasks.operations.rollback import ancestors
from lethe.tasks.outages import is_outage, outage_reason
from lethe.tasks.settings import Settings, load_settings
from lethe.tasks.steps.escalation import AttemptPlan
from lethe.tasks.steps.evaluate import HELD_OUT, EvalCache, eval_key, generate_samples_task, score_task
from lethe.tasks.steps.fingerprint import sample_fingerprint
from lethe.tasks.steps.gates import check_gates
from lethe.tasks.steps.recovery_audit import ATTACKED, attacker_source, audit_recovery_task
from lethe.tasks.steps.replay import replay_task
from lethe.tasks.steps.train_adapter import train_adapter_task
from lethe.tasks.stores.batch_lock import batch_lock
from lethe.tasks.stores.prepared_splits import load_split
from lethe.tasks.stores.queue import FAILED, Request, RequestQueue
from lethe.tasks.stores.registry import Registry, promote_task, register_version_task
from lethe.tasks.stores.replay_sets import DatasetStore, version_replay_sets
from lethe.tasks.workspace import Workspace


@dataclass
class Context:
    """Everything a step needs, opened once per batch (after the batch lock is held)."""

    settings: Settings
    workspace: Workspace
    queue: RequestQueue
    registry: Registry
    store: DatasetStore
    cache: EvalCache
    judge: object  # models.judge.Judge, or a plug-in wrapped in models.judge_plugin.PluginJudge
    real: tuple

    @classmethod
    def open(cls, settings: Settings, workspace: Workspace) -> "Context":
        return cls(
            settings,
            workspace,
            RequestQueue(workspace.queue_location),
            Registry(workspace, settings.registry),
            DatasetStore(workspace.dvc_root, workspace.dvc_remote, settings.storage.s3_endpoint),
            EvalCache(workspace.evals),
            open_judge(settings.generator.judge, settings.paths.judge),
            load_split("test", settings.paths.prepared),
        )


def forgotten_of(version) -> list[str]:
    value = version.tags.get("forgotten", "")
    return [c for c in value.split(",") if c]


def evaluation_samples(ctx: Context, generator, adapters, what: str) -> dict:
    """The samples an evaluation scores: every concept's, and its held-out paraphrases' where it has them."""
    s = ctx.settings
    out = {"main": generate_samples_task(generator, adapters, s.eval, s.sampling, reporter(what))}
    if generator.paraphrased:
        out["held_out"] = generate_samples_task(
            generator, adapters, s.eval, s.sampling, reporter(f"{what}, held-out paraphrases"), held_out=True
        )
    return out


def attacker_images(ctx: Context) -> tuple:
    """The recovery attacker's real images, the prepared train split, for either kind of model: the audit takes
    a concept's own (by name) where they fit the model, and a text-to-image model's base samples otherwise."""
    return load_split("train", ctx.settings.paths.prepared)


def audit_targets(ctx: Context, parent: str, concept: str, forgotten: list[str]) -> list[str]:
    """The concepts a request's recovery audit attacks: every forgotten one, or (`recovery.concepts_per_step`)
    the request's own and the earlier ones whose last audit in the lineage is oldest (never audited first),
    so each step's audit costs the same however many concepts are forgotten, and every concept comes round."""
    limit = ctx.settings.recovery.concepts_per_step
    if limit is None or len(forgotten) <= limit:
        return list(forgotten)
    earlier = [c for c in forgotten if c != concept]
    age: dict[str, int] = {}
    for steps_ago, registered in enumerate(ancestors(ctx.registry, parent)):
        age.update({c: steps_ago for c in earlier if c not in age and f"recovery.{c}" in registered.tags})
        if len(age) == len(earlier):  # every earlier concept's last audit is found
            break
    earlier.sort(key=lambda c: -age.get(c, len(age) + 10**6))
    chosen = {concept, *earlier[: limit - 1]}
    return [c for c in forgotten if c in chosen]


def recovery_tags(ctx: Context, generator, recovery: dict, attacker: tuple | None = None) -> dict:
    """The recovery audit's tags of a version: success per concept, budget, attack and image source."""
    if not recovery:
        return {"recovery": f"not audited: no recovery attack for {generator.kind} models"}
    attacker = attacker_images(ctx) if attacker is None else attacker
    return {
        **{f"recovery.{c}": f"{a:.4f}" for c, a in recovery.items()},
        "recovery.budget": json.dumps(ctx.settings.recovery.model_dump()),
        "recovery_attack": ATTACKED[generator.kind],
        "recovery_images": json.dumps({c: attacker_source(generator, c, attacker) for c in recovery}),
    }


def cache_samples(ctx: Context, version: str, samples: dict) -> None:
    key = eval_key(ctx.settings.eval, ctx.settings.sampling)
    ctx.cache.put(version, key, *samples["main"])
    if "held_out" in samples:
        ctx.cache.put(version, key + HELD_OUT, *samples["held_out"])


def samples_of(ctx: Context, version: str, paraphrased: bool) -> dict:
    """Evaluation samples of a registered version, from the cache or made now."""
    key = eval_key(ctx.settings.eval, ctx.settings.sampling)
    cached = {"main": ctx.cache.get(version, key)}
    if paraphrased:
        cached["held_out"] = ctx.cache.get(version, key + HELD_OUT)
    if all(v is not None for v in cached.values()):
        return cached
    generator, adapters = ctx.registry.load(version)
    samples = evaluation_samples(ctx, generator, adapters, f"evaluate version {version}")
    cache_samples(ctx, version, samples)
    return samples


def scored(ctx: Context, samples: dict, concepts: list[str], forgotten: list[str]) -> dict:
    s = ctx.settings
    return score_task(
        *samples["main"],
        concepts,
        ctx.judge,
        forgotten,
        *ctx.real,
        s.eval,
        s.sampling,
        held_out=samples.get("held_out"),
    )


def grid_file(
    ctx: Context, folder: Path, images, labels, concepts: list[str], forgotten: list[str], first: list[str] = ()
) -> Path:
    """One labelled row per concept, `first` (the forgotten concept and its anchor) on top."""
    order = list(dict.fromkeys([*first, *concepts]))
    path = folder / "samples.png"
    concept_grid(images, labels, concepts, order, ctx.settings.report.grid_per_concept, forgotten).save(path)
    return path


def log_lineage_plot(ctx: Context, version: str) -> None:
    """The lineage as it stands once `version` is registered, logged with it."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx.registry.log_file(version, lineage_plot(lineage(ctx.registry), Path(tmp) / "lineage.png"), "report")


BASE_KEY = "base"  # the base version's registration key


def ensure_base(ctx: Context) -> str:
    """Register the base generator as version 1 (the root of the lineage, production until a promotion).
    A batch killed between registering the base and promoting it left the base without the alias: it is
    promoted now."""
    production = ctx.registry.production()
    if production is not None:
        return production.version
    base = ctx.registry.by_key(BASE_KEY)
    if base is not None:
        promote_task(ctx.registry, str(base.version))
        return str(base.version)
    if ctx.registry.versions():
        raise RuntimeError(f"model {ctx.registry.model_name} has versions but no production alias and no base")
    s = ctx.settings
    generator = open_generator(s.generator)
    check_judge_covers(ctx.judge, generator.concepts)
    adapters = AdapterStack()
    samples = evaluation_samples(ctx, generator, adapters, "evaluate base")
    metrics = scored(ctx, samples, generator.concepts, [])
    with tempfile.TemporaryDirectory() as tmp:
        files = {"samples": grid_file(ctx, Path(tmp), *samples["main"], generator.concepts, [])}
        tags = {
            "kind": "base",
            "generator_kind": generator.kind,
            "gate": "passed",
            "forgotten": "",
            "parent_version": "",
            "request_id": "",
            "eval_key": metrics["eval_key"],
            "sample_sha256": sample_fingerprint(generator, adapters, s.fingerprint, s.sampling),
        }
        version = register_version_task(
            ctx.registry,
            key=BASE_KEY,
            generator=generator,
            adapters=adapters,
            sampling=s.sampling.model_dump(),
            run_name="base",
            settings=s.model_dump(mode="json"),
            metrics=summary_metrics(metrics),
            tags=tags,
            description="Base generator: the root of the lineage, nothing forgotten.",
            files=files,
        )
    cache_samples(ctx, version, samples)
    promote_task(ctx.registry, version)
    return version


def summary_metrics(scored: dict) -> dict:
    out = {k: scored[k] for k in ("forget_acc_max", "forget_acc_mean", "retain_acc_mean", "kid")}
    out.update({f"acc.{c}": a for c, a in scored["accuracy"].items()})
    if "held_out_accuracy" in scored:
        out["held_out_forget_acc_max"] = scored["held_out_forget_acc_max"]
        out.update({f"held_out_acc.{c}": a for c, a in scored["held_out_accuracy"].items()})
    return out


def registration_key(request: Request) -> str:
    return f"request-{request.id}-attempt-{request.attempts}"


def finish_registered(ctx: Context, request: Request, registered) -> dict:
    """This attempt registered `registered` before its process died (the queue resumes an interrupted attempt
    under the same number): finish it from the registry's record instead of training again. A version that
    passed its gates is promoted, unless production has moved off its parent meanwhile. The queue's transition
    (done, the next attempt, or failed) is the ladder's (flows/ladder.py), as for a fresh attempt."""
    tags, version = registered.tags, str(registered.version)
    production = ctx.registry.production()
    reasons = [r for r in tags.get("gate_reasons", "").split("; ") if r] if tags.get("gate") != "passed" else []
    if not reasons and str(production.version) not in (version, tags.get("parent_version")):
        reasons = [
            f"interrupted after registering version {version}; production moved meanwhile from its parent "
            f"{tags.get('parent_version')} to {production.version}: re-queue the request"
        ]
    if not reasons:
        promote_task(ctx.registry, version)
    get_run_logger().warning(
        "request %s: resumed after an interruption; version %s was registered already (%s)",
        request.id,
        version,
        "promoted" if not reasons else "; ".join(reasons),
    )
    return {
        "request_id": request.id,
        "attempt": request.attempts,
        "concept": request.concept,
        "anchor": tags.get("anchor"),
        "version": version,
        "parent_version": tags.get("parent_version"),
        "promoted": not reasons,
        "reasons": reasons,
        "resumed": True,
    }


@flow(name="lethe-unlearn-request", log_prints=True)
def unlearn_request(ctx: Context, request: Request, plan: AttemptPlan) -> dict:
    """One attempt at a deletion request, as `plan` (the escalation ladder's) says; returns the attempt's summary.
    A version that passes its gates is promoted; the queue's transition is the caller's (flows/ladder.py)."""
    s = ctx.settings
    adapter = s.adapter.model_copy(update={"intensity": plan.intensity})  # the attempt's, as the ladder says
    adversarial = s.train.adversarial.model_copy(update={"rounds": plan.adversarial_rounds})
    train = s.train.model_copy(update={"steps": plan.steps, "adversarial": adversarial})
    logged = s.model_dump(mode="json")  # the settings this attempt ran with
    logged["adapter"]["intensity"], logged["train"]["steps"] = plan.intensity, plan.steps
    logged["train"]["adversarial"]["rounds"] = plan.adversarial_rounds
    registered = ctx.registry.by_key(registration_key(request))
    if registered is not None:
        return finish_registered(ctx, request, registered)
    parent = ctx.registry.production()
    forgotten_before = forgotten_of(parent)
    if request.concept in forgotten_before:
        raise ValueError(f"{request.concept} is already forgotten by production version {parent.version}")
    if plan.anchor in forgotten_before:
        raise ValueError(f"anchor {plan.anchor} is forgotten by production version {parent.version}")
    generator, teacher = ctx.registry.load(parent.version)
    name = f"request-{request.id}"
    if name in teacher.names:
        raise ValueError(f"production version {parent.version} already holds an adapter named {name}")
    replay = replay_task(
        generator,
        teacher,
        ctx.judge,
        request.concept,
        plan.anchor,
        forgotten_before,
        s.distill,
        s.sampling,
        progress=reporter(f"request {request.id}: teacher replay"),
        prompts=request.prompts,
        anchor_prompts=request.anchor_prompts,
        avoid=plan.avoid,
    )
    forget_ref, retain_ref = version_replay_sets(
        ctx.store, request.id, request.attempts, replay.forget_tensors(), replay.retain_tensors()
    )
    trained = train_adapter_task(
        generator,
        teacher,
        replay.rows(generator),
        adapter,
        train,
        name,
        progress=reporter(f"request {request.id}: train adapter"),
    )
    forgotten_after = forgotten_before + [request.concept]
    parent_samples = samples_of(ctx, parent.version, bool(generator.paraphrased))
    before = scored(ctx, parent_samples, generator.concepts, forgotten_after)
    samples = evaluation_samples(ctx, generator, trained.stack, f"request {request.id}: evaluate new version")
    after = scored(ctx, samples, generator.concepts, forgotten_after)
    attacker = attacker_images(ctx)
    audited = audit_targets(ctx, str(parent.version), request.concept, forgotten_after)
    after["recovery"] = audit_recovery_task(
        generator, trained.stack, ctx.judge, audited, attacker, s.recovery, s.sampling
    )
    images, labels = samples["main"]
    confusion = measure_anchor_confusion(
        ctx.judge, *parent_samples["main"], generator.concepts, request.concept, replay.anchor
    )
    confusions = lineage_confusions(ctx.registry, str(parent.version))
    if confusion:
        confusions[request.concept] = confusion
    reasons = check_gates(after, before, s.gates, confusions)
    ws = ctx.workspace
    tags = {
        "kind": "unlearning-step",
        "request_id": request.id,
        "request_note": request.note[:500],
        "concept": request.concept,
        "anchor": replay.anchor,
        **({"request_prompts": json.dumps(list(request.prompts))} if request.prompts else {}),
        **({"request_anchor_prompts": json.dumps(list(request.anchor_prompts))} if request.anchor_prompts else {}),
        "parent_version": str(parent.version),
        "forgotten": ",".join(forgotten_after),
        "forget_md5": forget_ref.md5,
        "retain_md5": retain_ref.md5,
        "forget_path": ws.relative(forget_ref.path),
        "retain_path": ws.relative(retain_ref.path),
        "adapter_name": name,
        "adapter_sha256": trained.stack.sha256([name]),
        **confusion_tag(confusion),
        "gate": "failed" if reasons else "passed",
        "gate_reasons": "; ".join(reasons)[:4000],
        "rejected": "true" if reasons else "false",
        "eval_key": after["eval_key"],
        "trainable_params": trained.trainable_params,
        "adapter_targets": ",".join(trained.targets),
        "adapter_saliency": json.dumps({k: float(f"{v:.3g}") for k, v in trained.saliency.items()}),
        "sample_sha256": sample_fingerprint(generator, trained.stack, s.fingerprint, s.sampling),
        "metric.forget_acc_max": f"{after['forget_acc_max']:.4f}",
        "metric.retain_acc_mean": f"{after['retain_acc_mean']:.4f}",
        "metric.kid": f"{after['kid']:.4f}",
        "generator_kind": generator.kind,
        **plan.tags(),
        "request_received": request.created_at,
        **({"request_due": request.due_at} if request.due_at else {}),
    }
    if "held_out_accuracy" in after:
        tags["metric.held_out_forget_acc_max"] = f"{after['held_out_forget_acc_max']:.4f}"
    tags.update(recovery_tags(ctx, generator, after["recovery"], attacker))
    metrics = summary_metrics(after)
    metrics.update(
        {
            "before.forget_acc": before["accuracy"][request.concept],
            "before.retain_acc_mean": before["retain_acc_mean"],
            "before.kid": before["kid"],
            "trainable_params": trained.trainable_params,
            "train_seconds": trained.seconds,
            "attempt": plan.attempt,
            "adversarial_rounds_run": sum("attack_round" in h for h in trained.history),  # what training did
        }
    )
    if not reasons:  # this version fulfils the request: how long the request waited for production
        metrics["request_to_production_hours"] = hours_since(request.created_at)
    if "held_out_accuracy" in before:
        metrics["before.held_out_acc"] = before["held_out_accuracy"][request.concept]
    if after["recovery"]:
        metrics["recovery_acc_max"] = max(after["recovery"].values())
        metrics.update({f"recovery_acc.{c}": a for c, a in after["recovery"].items()})
    metrics = {k: v for k, v in metrics.items() if v == v}  # NaN (KID without real images) is not logged
    description = (
        f"Request {request.id}, attempt {plan.attempt} ({plan.why}): forget {request.concept} (anchor "
        f"{replay.anchor}) on top of version "
        f"{parent.version}. Forget accuracy {before['accuracy'][request.concept]:.3f} -> "
        f"{after['accuracy'][request.concept]:.3f}; retained {before['retain_acc_mean']:.3f} -> "
        f"{after['retain_acc_mean']:.3f}. Gates: {'; '.join(reasons) or 'passed'}."
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "samples": grid_file(
                ctx, Path(tmp), images, labels, generator.concepts, forgotten_after, [request.concept, replay.anchor]
            )
        }
        version = register_version_task(
            ctx.registry,
            key=registration_key(request),
            generator=generator,
            adapters=trained.stack,
            sampling=s.sampling.model_dump(),
            run_name=f"request-{request.id}-{request.concept}-attempt-{plan.attempt}",
            settings=logged,
            metrics=metrics,
            tags=tags,
            description=description,
            files=files,
            datasets={"forget": (forget_ref.path, forget_ref.md5), "retain": (retain_ref.path, retain_ref.md5)},
        )
    cache_samples(ctx, version, samples)
    if not reasons:
        promote_task(ctx.registry, version)
    log_lineage_plot(ctx, version)
    summary = {
        "request_id": request.id,
        "attempt": plan.attempt,
        "concept": request.concept,
        "anchor": replay.anchor,
        "version": version,
        "parent_version": str(parent.version),
        "promoted": not reasons,
        "reasons": reasons,
        "forget_acc_before": before["accuracy"][request.concept],
        "forget_acc_after": after["accuracy"][request.concept],
        "retain_acc_before": before["retain_acc_mean"],
        "retain_acc_after": after["retain_acc_mean"],
        "kid_before": before["kid"],
        "kid_after": after["kid"],
        "earlier_forgotten_after": {c: after["accuracy"][c] for c in forgotten_before},
        "held_out_before": before.get("held_out_accuracy", {}).get(request.concept),
        "held_out_after": after.get("held_out_accuracy", {}).get(request.concept),
        "recovery_after": after["recovery"],
        "train_seconds": trained.seconds,
        "trainable_params": trained.trainable_params,
    }
    get_run_logger().info(step_summary_text(summary))
    create_markdown_artifact(
        markdown=step_summary_markdown(summary, after, ctx),
        key=f"request-{request.id}",
        description=f"Request {request.id}: forget {request.concept}",
    )
    return summary


def step_summary_markdown(r: dict, after: dict, ctx: Context) -> str:
    """A step's summary as the Prefect markdown artefact."""
    verdict = "**promoted to production**" if r["promoted"] else "**rejected**: " + "; ".join(r["reasons"])
    link = f"{ctx.workspace.mlflow_uri} → Models → {ctx.registry.model_name} → version {r['version']}"
    rows = "\n".join(
        f"| {c} | {'forgotten' if c in after['forgotten'] else 'retained'} | {a:.3f} |"
        for c, a in after["accuracy"].items()
    )
    return (
        f"# Request {r['request_id']}: forget `{r['concept']}` → `{r['anchor']}`\n\n"
        f"Version {r['version']} (parent {r['parent_version']}): {verdict}\n\n"
        f"| metric | before | after |\n|---|---|---|\n"
        f"| forget accuracy ({r['concept']}) | {r['forget_acc_before']:.3f} | {r['forget_acc_after']:.3f} |\n"
        + (
            f"| held-out paraphrases ({r['concept']}) | {r['held_out_before']:.3f} | {r['held_out_after']:.3f} |\n"
            if r.get("held_out_after") is not None
            else ""
        )
        + f"| retained mean accuracy | {r['retain_acc_before']:.3f} | {r['retain_acc_after']:.3f} |\n"
        f"| KID (retained) | {r['kid_before']:.4f} | {r['kid_after']:.4f} |\n"
        + "".join(f"| recovery attack ({c}) | - | {a:.3f} |\n" for c, a in r.get("recovery_after", {}).items())
        + "\n"
        f"Per concept, after:\n\n| concept | role | judged accuracy |\n|---|---|---|\n{rows}\n\n"
        f"MLflow: {link}\n"
    )


def step_summary_text(r: dict) -> str:
    """A step's summary as the lines `lethe run` prints."""
    verdict = "promoted to production" if r["promoted"] else "REJECTED: " + "; ".join(r["reasons"])
    attempt = f", attempt {r['attempt']}" if r.get("attempt", 1) > 1 else ""
    lines = [
        f"request {r['request_id']}{attempt}: forget {r['concept']} -> {r['anchor']} = version {r['version']} "
        f"(parent {r['parent_version']}), {verdict}",
        f"  forget accuracy {r['concept']}: {r['forget_acc_before']:.3f} -> {r['forget_acc_after']:.3f}"
        + (
            f"; on held-out paraphrases {r['held_out_before']:.3f} -> {r['held_out_after']:.3f}"
            if r.get("held_out_after") is not None
            else ""
        ),
        f"  retained concepts, mean accuracy: {r['retain_acc_before']:.3f} -> {r['retain_acc_after']:.3f}; "
        f"KID {r['kid_before']:.4f} -> {r['kid_after']:.4f}",
    ]
    if r.get("recovery_after"):
        lines.append(
            "  recovery attack, judged as the concept: "
            + ", ".join(f"{c} {a:.3f}" for c, a in r["recovery_after"].items())
        )
    if r["earlier_forgotten_after"]:
        lines.append(
            "  earlier forgotten, accuracy now: "
            + ", ".join(f"{c} {a:.3f}" for c, a in r["earlier_forgotten_after"].items())
        )
    return "\n".join(lines)


def consolidate_when_due(ctx: Context, logger) -> dict | None:
    """Inside a batch: consolidate production once `consolidate.every` requests sit unconsolidated on it. A
    consolidation that fails leaves production as it was (no request waits on it); an outage stops the batch."""
    from lethe.flows.consolidate import consolidate_production, consolidation_due

    if not consolidation_due(ctx):
        return None
    parent = str(ctx.registry.production().version)
    try:
        return consolidate_production(ctx, f"automatic: {ctx.settings.consolidate.every} requests unconsolidated")
    except Exception as error:
        outage = is_outage(error)
        logger.error(
            "consolidation of version %s %s:\n%s",
            parent,
            "stopped by an outage; the next batch resumes it" if outage else "failed; production stays as it is",
            traceback.format_exc(),
        )
        reason = f"waiting: {outage_reason(error)}" if outage else f"error: {type(error).__name__}: {error}"
        return {
            "consolidation": True,
            "version": None,
            "parent_version": parent,
            "promoted": False,
            "reasons": [reason],
            "interrupted": outage,
        }


def batch_settings(params_file: str, workspace: str | None) -> Settings:
    """The batch's settings: the file, the process environment's LETHE_* overrides, then `workspace`."""
    settings = load_settings(params_file, os.environ)
    return settings.override({"paths.workspace": str(Path(workspace).resolve())}) if workspace else settings


def read_inbox(ctx: Context, storage, logger) -> None:
    """Queue the S3 inbox's new request objects before the batch claims any. An outage of the inbox is
    logged and the batch goes on with what is queued; the objects stay for the next batch."""
    from lethe.tasks.stores.request_inbox import ingest_inbox
    from lethe.tasks.stores.s3 import s3_client

    generator = open_generator(ctx.settings.generator)
    try:
        report = ingest_inbox(
            ctx.queue, generator, s3_client(storage.s3_endpoint), storage.inbox, ctx.settings.deadlines.days
        )
    except Exception as error:  # botocore's errors have no common base worth naming here
        logger.error(
            "the inbox %s could not be read (%s: %s); it is read again next batch",
            storage.inbox,
            type(error).__name__,
            error,
        )
        return
    for key, reason in report.rejected:
        logger.warning("inbox object %s rejected: %s", key, reason)
    if report.queued:
        logger.info("inbox: queued %s", ", ".join(f"{key} as request {i}" for key, i in report.queued))


class RequestFailed(Exception):
    """A request that ended failed: raised by its outcome task so the Prefect UI shows it failed, with why."""


@task(name="request-outcome", cache_policy=NO_CACHE)
def request_outcome(request_id: int, concept: str, state: str, reasons: str) -> str:
    """One task per request the batch ended: completed when done, failed (with the reasons) when failed."""
    if state == FAILED:
        raise RequestFailed(f"request {request_id} ({concept}) failed: {reasons}")
    return state


@flow(name="lethe-process-queue", log_prints=True)
def process_queue(params_file: str = "params.yaml", workspace: str | None = None, limit: int | None = None) -> list:
    """Drain pending requests in order (at most `limit`), one at a time; the nightly deployment runs this.

    The batch lock is taken before the queue, the registry or any model is opened, so a second batch on the
    same workspace touches nothing."""
    logger = get_run_logger()
    if reason := replaced_schedule_reason(flow_run.get_id()):
        logger.warning(reason)
        return []
    settings = batch_settings(params_file, workspace)
    configure_process(settings, os.environ)

    ws = Workspace.open(settings)
    reports, ended, flagged = [], {}, []
    pointer = mlflow_pointer(ws.mlflow_uri, settings.registry.model_name)
    with batch_lock(ws.lock, ws.queue_location):
        ctx = Context.open(settings, ws)
        check_agreement(ctx.queue, ctx.registry)
        recovered = ctx.queue.recover()
        if recovered:
            logger.warning("requests %s were interrupted by an earlier crash and are pending again", recovered)
        if settings.storage.inbox:
            read_inbox(ctx, settings.storage, logger)
        ensure_base(ctx)
        done = 0  # requests claimed; consolidations do not count against `limit`
        while True:
            consolidation = consolidate_when_due(ctx, logger)  # also one a killed batch left due or unfinished
            if consolidation is not None:
                reports.append(consolidation)
                if consolidation.get("interrupted"):
                    break
            if limit is not None and done >= limit:
                break
            request = ctx.queue.claim_next()
            if request is None:
                break
            done += 1
            try:
                request, attempts = fulfil(ctx, request, unlearn_request, logger)
            except Interrupted as stop:
                reports.append(stop.report)
                break
            reports.extend(attempts)
            ended[request.id] = request
            request_outcome(request.id, request.concept, request.state, request.reasons, return_state=True)
            if request.state == FAILED:
                alert(settings.notify, "failed", failed_message(request, pointer), logger)
        flagged = flags(ctx.queue.list(), settings.deadlines)
    overdue = [f for f in flagged if f.kind != "failed"]
    if overdue:
        alert(settings.notify, "overdue", overdue_message(overdue, pointer), logger)
    if ended:
        alert(settings.notify, "batch", batch_message(reports, ended, flagged, pointer), logger)
    table_artefact(reports, ended, flagged)
    summary = "\n".join(
        f"| {r.get('request_id', 'consolidation')} | {r.get('concept', '-')} | {r.get('attempt', '-')} | "
        f"{r.get('version') or '-'} | "
        f"{'promoted' if r['promoted'] else ('' if r.get('interrupted') else 'failed: ') + '; '.join(r['reasons'])} |"
        for r in reports
    )
    create_markdown_artifact(
        markdown=f"# Lethe batch\n\n{done} request(s)\n\n| request | concept | attempt | version "
        f"| result |\n|---|---|---|---|---|\n{summary}\n",
        key="lethe-batch",
        description="Requests processed by this batch",
    )
    return reports
