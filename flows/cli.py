"""`lethe`: the command line of the unlearning pipeline, and the process's entry point.

`--params FILE` (default ./params.yaml) names the settings; LETHE_<SECTION>__<KEY> variables override them
(see lethe.tasks.settings); `--workspace DIR` overrides `paths.workspace`. `main` loads the settings once,
configures the process (flows/process.py) and hands each command the settings it needs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from lethe.flows.process import configure_process
from lethe.tasks.outages import is_outage, outage_reason
from lethe.tasks.settings import Settings, SettingsError, load_settings
from lethe.tasks.stores.integrity import IntegrityError
from lethe.tasks.workspace import Workspace

OUTAGE = 4  # the exit status when a service Lethe needs did not answer (2: refused input, 3: a batch is running)


def _queue(settings: Settings):
    from lethe.tasks.stores.queue import RequestQueue

    return RequestQueue(Workspace.open(settings).queue_location)


def _registry(settings: Settings):
    from lethe.tasks.stores.registry import Registry

    return Registry(Workspace.open(settings), settings.registry)


def known_concepts(settings: Settings) -> list[str]:
    """The concepts of the workspace's generator (`generator.folder`, with its concept file)."""
    from lethe.tasks.model_sources import open_generator

    return open_generator(settings.generator).concepts


def cmd_concepts(args, settings: Settings) -> int:
    from lethe.models.concepts import DOMAINS

    queue = _queue(settings)
    state = {r.concept: f"forgotten (request {r.id}, version {r.version})" for r in queue.list(["done"])}
    state.update({r.concept: f"queued (request {r.id}, {r.state})" for r in queue.list(["pending", "running"])})
    for name in known_concepts(settings):
        print(f"{name:<12} {DOMAINS.get(name, '-'):<9} {state.get(name, 'retained')}")
    return 0


def cmd_request_add(args, settings: Settings) -> int:
    from lethe.tasks.model_sources import open_generator
    from lethe.tasks.operations.enqueue import enqueue
    from lethe.tasks.stores.queue import RequestRefused

    queue = _queue(settings)
    try:
        request = enqueue(
            queue,
            open_generator(settings.generator),
            args.concept,
            args.anchor,
            args.note or "",
            args.prompt or (),
            args.anchor_prompt or (),
            due_at=args.due,
            deadline_days=settings.deadlines.days,
        )
    except RequestRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 2
    print(request.id)
    return 0


def cmd_request_inbox(args, settings: Settings) -> int:
    from lethe.tasks.model_sources import open_generator
    from lethe.tasks.stores.request_inbox import ingest_inbox
    from lethe.tasks.stores.s3 import s3_client

    if settings.storage.inbox is None:
        print("refused: no inbox is configured (storage.inbox: s3://BUCKET/PREFIX)", file=sys.stderr)
        return 2
    report = ingest_inbox(
        _queue(settings),
        open_generator(settings.generator),
        s3_client(settings.storage.s3_endpoint),
        settings.storage.inbox,
        settings.deadlines.days,
    )
    for key, request_id in report.queued:
        print(f"queued   {key} -> request {request_id}")
    for key, reason in report.rejected:
        print(f"rejected {key}: {reason}")
    for key in report.already:
        print(f"moved    {key} (read before)")
    print(f"{len(report.queued)} queued, {len(report.rejected)} rejected from {settings.storage.inbox}")
    return 0


def cmd_request_list(args, settings: Settings) -> int:
    from datetime import datetime, timezone

    from lethe.tasks.operations.deadlines import age_days, due_of, flags

    queue = _queue(settings)
    requests = queue.list()
    flagged = {f.request_id: f.kind for f in flags(requests, settings.deadlines)}
    if args.json:
        rows = []
        for r in requests:
            row = r.to_dict()
            row["due"] = due_of(r, settings.deadlines).isoformat(timespec="seconds")
            row["flag"] = flagged.get(r.id)
            row["decisions"] = [d.to_dict() for d in queue.decisions(r.id)]
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return 0
    now = datetime.now(timezone.utc)
    print(
        f"{'id':>4}  {'state':<11} {'concept':<12} {'anchor':<12} {'version':>7} {'tries':>5} {'age':>5}  "
        f"{'due':<10} {'flag':<8} note / reasons"
    )
    for r in requests:
        anchor = r.anchor or next((a["anchor"] for a in reversed(r.attempt_log) if a.get("anchor")), None)
        print(
            f"{r.id:>4}  {r.state:<11} {r.concept:<12} {anchor or '(auto)':<12} {r.version or '-':>7} "
            f"{r.attempts:>5} {age_days(r, now):>4.0f}d  {due_of(r, settings.deadlines):%Y-%m-%d} "
            f"{flagged.get(r.id, '-'):<8} {r.reasons or r.note}"
        )
    return 0


def _who(args) -> str:
    return args.by or getpass.getuser()


def _decided(action, *call) -> int:
    from lethe.tasks.stores.queue import InvalidTransition, RequestRefused

    try:
        return action(*call)
    except (InvalidTransition, RequestRefused) as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 2


def cmd_request_approve(args, settings: Settings) -> int:
    from lethe.tasks.operations import decisions

    queue, registry = _queue(settings), _registry(settings)

    def run() -> int:
        numbers = decisions.check_approval(queue, registry, args.id, args.version)
        print(f"request {args.id}, version {args.version}: what the gates measured")
        for key, value in numbers.items():
            print(f"  {key}: {value}")
        decision, _ = decisions.approve(queue, registry, args.id, args.version, args.reason, _who(args))
        print(f"approved by {decision.by_user} at {decision.at}: version {args.version} is production")
        return 0

    return _decided(run)


def cmd_request_cancel(args, settings: Settings) -> int:
    from lethe.tasks.operations import decisions

    def run() -> int:
        decision = decisions.cancel(_queue(settings), _registry(settings), args.id, args.reason, _who(args))
        print(f"request {args.id} cancelled by {decision.by_user} at {decision.at}")
        return 0

    return _decided(run)


def cmd_request_retry(args, settings: Settings) -> int:
    from lethe.tasks.operations import decisions

    overrides = {k: v for k, v in (("anchor", args.anchor), ("steps", args.steps)) if v is not None}

    def run() -> int:
        decision = decisions.retry(
            _queue(settings), _registry(settings), args.id, overrides, args.reason, _who(args), known_concepts(settings)
        )
        print(
            f"request {args.id} is pending again (a new ladder{', with ' + str(overrides) if overrides else ''}), "
            f"by {decision.by_user}; `lethe run` processes it"
        )
        return 0

    return _decided(run)


def cmd_run(args, settings: Settings) -> int:
    from lethe.flows.consolidate import consolidation_summary_text
    from lethe.flows.unlearn import process_queue, step_summary_text
    from lethe.tasks.stores.batch_lock import BatchAlreadyRunning

    try:
        reports = process_queue(
            params_file=str(args.params_file), workspace=str(settings.paths.workspace), limit=args.limit
        )
    except BatchAlreadyRunning as busy:
        print(f"not started: {busy}", file=sys.stderr)
        return 3
    for report in reports:
        if report.get("consolidation"):
            print(consolidation_summary_text(report))
        elif report.get("interrupted"):
            print(
                f"request {report['request_id']} ({report['concept']}) is pending again, "
                f"{'; '.join(report['reasons'])}; the next batch resumes it",
                file=sys.stderr,
            )
        elif report.get("resumed"):
            verdict = "promoted to production" if report["promoted"] else "FAILED: " + "; ".join(report["reasons"])
            print(
                f"request {report['request_id']}: resumed after an interruption: version {report['version']} "
                f"was registered already, {verdict}"
            )
        elif "version" in report:
            print(step_summary_text(report))
        else:
            print(f"request {report['request_id']} ({report['concept']}) failed: {'; '.join(report['reasons'])}")
    interrupted = [r for r in reports if r.get("interrupted")]
    attempts = [r for r in reports if not r.get("interrupted") and not r.get("consolidation")]
    finished = {r["request_id"]: r for r in attempts}  # a request's last attempt says how it ended
    print(
        f"processed {len(finished)} request(s): "
        f"{sum(r['promoted'] for r in finished.values())} promoted, "
        f"{sum(not r['promoted'] for r in finished.values())} failed"
        + (f" ({len(attempts)} attempts)" if len(attempts) > len(finished) else "")
        + ("; stopped by an outage" if interrupted else "")
    )
    return OUTAGE if interrupted else 0


def cmd_consolidate(args, settings: Settings) -> int:
    from lethe.flows.consolidate import NothingToConsolidate, consolidate_now, consolidation_summary_text
    from lethe.tasks.stores.batch_lock import BatchAlreadyRunning

    try:
        report = consolidate_now(params_file=str(args.params_file), workspace=str(settings.paths.workspace))
    except BatchAlreadyRunning as busy:
        print(f"not started: {busy}", file=sys.stderr)
        return 3
    except NothingToConsolidate as nothing:
        print(f"refused: {nothing}", file=sys.stderr)
        return 2
    print(consolidation_summary_text(report))
    return 0 if report["promoted"] else 1


def cmd_lineage(args, settings: Settings) -> int:
    from lethe.tasks.operations.lineage import format_lineage, lineage

    rows = lineage(_registry(settings))
    print(json.dumps(rows, indent=2) if args.json else format_lineage(rows))
    return 0


def cmd_sample(args, settings: Settings) -> int:
    from lethe.tasks.operations.sample_version import sample_version

    out = sample_version(
        _registry(settings),
        args.concept,
        args.prompt,
        args.version,
        args.n,
        args.seed,
        args.intensity,
        args.out,
        settings.sampling,
        settings.report.grid_per_concept,
    )
    print(out)
    return 0


def cmd_export(args, settings: Settings) -> int:
    if args.log_mlflow and (args.format != "lora" or args.kohya):
        print("error: --log-mlflow logs a LoRA in diffusers' keys: it goes with --format lora", file=sys.stderr)
        return 2
    if args.format == "diffusers":
        from lethe.tasks.operations.export_version import export_version

        if args.kohya:
            print("error: --kohya goes with --format lora", file=sys.stderr)
            return 2
        print(export_version(_registry(settings), args.version, args.out, settings.gates))
        return 0
    from lethe.tasks.model_sources import open_judge
    from lethe.tasks.operations.export_distilled import ExportRefused, export_distilled
    from lethe.tasks.steps.evaluate import EvalCache
    from lethe.tasks.stores.prepared_splits import load_split

    s = settings
    try:
        result = export_distilled(
            _registry(s),
            args.version,
            args.format,
            args.out,
            args.kohya,
            open_judge(s.generator.judge, s.paths.judge),
            load_split("test", s.paths.prepared),
            load_split("train", s.paths.prepared),  # the recovery audit's attacker images
            s.export,
            s.eval,
            s.recovery,
            s.gates,
            EvalCache(Workspace.open(s).evals),  # the version's own evaluation samples, when cached
            log=lambda line: print(line, file=sys.stderr),
        )
    except ExportRefused as refused:
        print(json.dumps(refused.result, indent=2))
        print(f"refused: {refused}: {'; '.join(refused.result['reasons'])}. Nothing was written", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.log_mlflow:
        from lethe.tasks.operations.log_lora import log_lora

        print(f"logged with MLflow's diffusers flavour: {log_lora(_registry(s), args.out, s.generator.folder)}")
    print(args.out)
    return 0


def cmd_verify_export(args, settings: Settings) -> int:
    from lethe.tasks.model_sources import open_judge
    from lethe.tasks.operations.verify_export import verify_export

    judge = open_judge(settings.generator.judge, settings.paths.judge)
    result = verify_export(args.folder, judge, args.n, args.seed, args.base)
    print(json.dumps(result, indent=2))
    if not result["passed"]:
        print(f"error: export of version {result['version']} fails its forget check", file=sys.stderr)
        return 1
    return 0


def cmd_rollback(args, settings: Settings) -> int:
    from lethe.tasks.operations.rollback import RollbackRefused, move_production
    from lethe.tasks.stores.batch_lock import BatchAlreadyRunning, batch_lock

    steps = args.steps if args.steps is not None else (None if args.to else 1)
    ws = Workspace.open(settings)
    try:
        with batch_lock(ws.lock, ws.queue_location):  # a batch builds on production: never move it under one
            result = move_production(
                _registry(settings),
                _queue(settings),
                who=args.by or getpass.getuser(),
                to=args.to,
                steps=steps,
                reason=args.reason or "",
                requeue=args.requeue,
                fingerprint=settings.fingerprint,
                sampling=settings.sampling,
            )
    except RollbackRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 2
    except BatchAlreadyRunning as busy:
        print(f"refused: a batch is running, and it builds on production: {busy}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"production: version {result['from']} -> version {result['to']} ({result['reason']}, by {result['who']})")
    if result["undone"]:
        print(
            f"  undone versions: {', '.join(result['undone'])}; requests rolled back: "
            f"{', '.join(map(str, result['requests']['rolled_back'])) or '-'}"
        )
    if result["redone"]:
        print(
            f"  restored versions: {', '.join(result['redone'])}; requests done again: "
            f"{', '.join(map(str, result['requests']['restored'])) or '-'}"
        )
    if result["requests"]["requeued"]:
        print(f"  re-queued requests: {', '.join(map(str, result['requests']['requeued']))}")
    elif result["requests"]["rolled_back"]:
        print("  re-queue them with `lethe request retry ID` (or roll back with --requeue)")
    if result["verified"] is not None:
        print(
            "  check: production samples "
            + ("match" if result["verified"] else "DO NOT match")
            + f" the fingerprint recorded when version {result['to']} was registered"
        )
    return 0 if result["verified"] is not False else 1


def cmd_pull(args, settings: Settings) -> int:
    from lethe.tasks.operations.pull_version import PullFailed, pull_version
    from lethe.tasks.stores.replay_sets import DatasetStore

    ws = Workspace.open(settings)
    try:
        result = pull_version(
            _registry(settings),
            DatasetStore(ws.dvc_root, ws.dvc_remote, settings.storage.s3_endpoint),
            ws,
            args.version,
            settings.fingerprint,
            settings.sampling,
        )
    except KeyError as missing:
        print(f"error: {missing.args[0]}", file=sys.stderr)
        return 2
    except PullFailed as failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for s in result["replay_sets"]:
        print(f"  version {s['version']} {s['set']:<6} {'pulled' if s['fetched'] else 'present'}  {s['path']}")
    print(
        f"version {result['version']} is in {ws.root}: its samples match the fingerprint recorded at registration "
        f"({result['fingerprint'][:12]}…), {len(result['replay_sets'])} replay set(s) match their md5"
    )
    return 0


def cmd_show(args, settings: Settings) -> int:
    from lethe.tasks.operations.lineage import lineage

    registry = _registry(settings)
    rows = {r["version"]: r for r in lineage(registry)}
    if args.version not in rows:
        print(f"error: no version {args.version!r}; versions: {', '.join(rows)}", file=sys.stderr)
        return 2
    row = rows[args.version]
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    version = registry.version(args.version)
    print(
        f"version {row['version']}: {row['status']}{' (' + ', '.join(row['aliases']) + ')' if row['aliases'] else ''}"
    )
    print(f"  {version.description}")
    for key in sorted(row["tags"]):
        print(f"  tag {key} = {row['tags'][key]}")
    for key in sorted(row["metrics"]):
        print(f"  metric {key} = {row['metrics'][key]:.4f}")
    if row["tags"].get("forget_path"):
        ws = registry.workspace
        print("  restore its replay sets (DVC, from the workspace's remote):")
        for name in ("forget", "retain"):
            path = ws.absolute(row["tags"][f"{name}_path"])
            print(
                f"    cd {ws.dvc_root} && dvc pull {path.relative_to(ws.dvc_root)}    "
                f"# md5 {row['tags'][f'{name}_md5']}"
            )
    return 0


def cmd_schedule(args, settings: Settings) -> int:
    from lethe.flows import deployment

    name = settings.schedule.name
    try:
        if not args.show:
            deployment.deploy_nightly(
                settings.schedule, args.params_file, settings.paths.workspace, cron=args.cron, timezone=args.timezone
            )
        if args.trigger:
            print(f"triggered flow run {deployment.trigger_now(name)}")
        info = deployment.describe_schedule(name)
    except (ValueError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(
        f"deployment {deployment.full_name(name)} (id {info['id']}): cron '{info['cron']}' {info['timezone']}, "
        f"pool {info['pool']}{', PAUSED' if info['paused'] else ''}, at most {info['concurrency_limit']} at a time"
    )
    print(f"  workspace {info['parameters'].get('workspace')}, params {info['parameters'].get('params_file')}")
    print("  next runs: " + (", ".join(r["time"] for r in info["next_runs"]) or "none"))
    if "PREFECT_API_URL" not in args.environ:
        print(
            "  note: no PREFECT_API_URL is set, so the deployment lives in this workspace's local Prefect database.\n"
            f"  Runs happen only while a server and a worker are up:\n"
            f"    PREFECT_HOME={args.environ.get('PREFECT_HOME')} prefect server start &\n"
            f"    PREFECT_API_URL=http://127.0.0.1:4200/api prefect worker start --pool {settings.schedule.pool}"
        )
    return 0


def cmd_report(args, settings: Settings) -> int:
    from lethe.tasks.operations.lineage import lineage
    from lethe.tasks.operations.lineage_report import write_report

    registry = _registry(settings)
    page = write_report(registry, lineage(registry), Path(args.out))
    print(f"{page} (and index.md beside it)")
    return 0


def cmd_certificate(args, settings: Settings) -> int:
    from lethe.tasks.operations.certificate import certificate, write_certificate

    registry = _registry(settings)
    facts = certificate(_queue(settings), registry, args.request_id, registry.workspace.mlflow_uri)
    html, data = write_certificate(facts, registry, Path(args.out))
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(f"{html} (and {data.name} beside it)")
    return 0


def cmd_demo(args, settings: Settings) -> int:
    from lethe.tasks.model_sources import open_generator
    from lethe.tasks.operations.enqueue import enqueue
    from lethe.tasks.stores.queue import RequestRefused

    queue, generator = _queue(settings), open_generator(settings.generator)
    for item in settings.demo.requests:
        try:
            request = enqueue(
                queue, generator, item.concept, item.anchor, "demo request", deadline_days=settings.deadlines.days
            )
            print(f"queued request {request.id}: forget {request.concept} -> {request.anchor or '(auto)'}")
        except RequestRefused as refused:
            print(f"skipped: {refused}")
    status = cmd_run(argparse.Namespace(limit=None, params_file=args.params_file), settings)
    print()
    cmd_lineage(argparse.Namespace(json=False), settings)
    return status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lethe", description="Continual unlearning for diffusion generators.")
    p.add_argument("--workspace", help="state folder (default: paths.workspace of the settings)")
    p.add_argument(
        "--params",
        default="params.yaml",
        help="settings file (default ./params.yaml); LETHE_<SECTION>__<KEY> variables override it",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("concepts", help="list concepts and whether they are retained, queued or forgotten").set_defaults(
        func=cmd_concepts
    )
    request = sub.add_parser("request", help="add or list deletion requests").add_subparsers(
        dest="action", required=True
    )
    add = request.add_parser("add", help="queue a deletion request; prints its id")
    add.add_argument("concept")
    add.add_argument("--anchor", help="concept to steer to (default: nearest retained concept, chosen at run time)")
    add.add_argument("--note", help="free text kept with the request (who asked, why)")
    add.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="text-to-image: a prompt to unlearn (repeatable); replaces the concept file's prompts for this request",
    )
    add.add_argument(
        "--anchor-prompt",
        action="append",
        metavar="TEXT",
        help="text-to-image: a prompt to steer to (repeatable); replaces the anchor's prompts for this request",
    )
    add.add_argument("--due", metavar="DATE", help="its deadline, ISO date or time (default: deadlines.days from now)")
    add.set_defaults(func=cmd_request_add)
    request.add_parser(
        "inbox", help="queue the request objects under storage.inbox (S3); each object enters once"
    ).set_defaults(func=cmd_request_inbox)
    listing = request.add_parser("list", help="all requests: state, attempts, age, due date, flags")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_request_list)
    approve = request.add_parser(
        "approve", help="make a failed request's rejected attempt production by hand (shows its gate numbers first)"
    )
    approve.add_argument("id", type=int)
    approve.add_argument("--version", required=True, help="one of the request's attempts (`lethe lineage`)")
    cancel = request.add_parser("cancel", help="withdraw a pending or failed request")
    cancel.add_argument("id", type=int)
    retry = request.add_parser("retry", help="send a failed, cancelled or rolled-back request back to the queue")
    retry.add_argument("id", type=int)
    retry.add_argument("--anchor", help="steer to this concept on every attempt (default: the automatic rule)")
    retry.add_argument("--steps", type=int, help="training steps of its first attempt (default: train.steps)")
    for decision, func in ((approve, cmd_request_approve), (cancel, cmd_request_cancel), (retry, cmd_request_retry)):
        decision.add_argument("--reason", required=True, help="why: kept on record with who and when")
        decision.add_argument("--by", help="who decides (default: the login name)")
        decision.set_defaults(func=func)
    run = sub.add_parser("run", help="process pending requests now (the flow the nightly deployment runs)")
    run.add_argument("--limit", type=int, help="process at most N requests")
    run.set_defaults(func=cmd_run)
    pull = sub.add_parser(
        "pull", help="bring a version and its lineage's replay sets into this workspace from the remote stores"
    )
    pull.add_argument("version", nargs="?", help="default: production")
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(func=cmd_pull)
    con = sub.add_parser(
        "consolidate",
        help="fold production's adapters into one per site: a new version, gated like a step (settings: consolidate)",
    )
    con.set_defaults(func=cmd_consolidate)
    lin = sub.add_parser("lineage", help="registered versions, parents, metrics and aliases")
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(func=cmd_lineage)
    show = sub.add_parser("show", help="everything about one version, with the commands to restore its data")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    rb = sub.add_parser("rollback", help="move production back (or forward) to a version that passed its gates")
    target = rb.add_mutually_exclusive_group()
    target.add_argument("--to", help="the version to make production")
    target.add_argument("--steps", type=int, help="undo the last N steps of production's lineage (default 1)")
    rb.add_argument("--reason", help="why; recorded as a tag with who and when")
    rb.add_argument("--by", help="who is rolling back (default: the login name)")
    rb.add_argument("--requeue", action="store_true", help="put the undone requests back in the queue")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(func=cmd_rollback)
    sch = sub.add_parser("schedule", help="create or update the nightly Prefect deployment (settings: schedule)")
    sch.add_argument("--cron", help="cron expression (default: schedule.cron, '0 2 * * *' as shipped)")
    sch.add_argument("--timezone", help="IANA time zone (default: schedule.timezone)")
    sch.add_argument("--show", action="store_true", help="only print the deployment and its next runs")
    sch.add_argument("--trigger", action="store_true", help="also start a run now (a worker picks it up)")
    sch.add_argument("--json", action="store_true")
    sch.set_defaults(func=cmd_schedule)
    rep = sub.add_parser("report", help="an HTML/Markdown page with the lineage, its plot and sample grids")
    rep.add_argument("--out", default="lethe-report", help="folder to write (default ./lethe-report)")
    rep.set_defaults(func=cmd_report)
    cert = sub.add_parser("certificate", help="an auditor's page (HTML + JSON) for a fulfilled deletion request")
    cert.add_argument("request_id", type=int)
    cert.add_argument("--out", default="lethe-certificates", help="folder to write (default ./lethe-certificates)")
    cert.add_argument("--json", action="store_true", help="also print the certificate's JSON")
    cert.set_defaults(func=cmd_certificate)
    smp = sub.add_parser("sample", help="generate images of a concept (or a prompt) from a registered version")
    asked = smp.add_mutually_exclusive_group(required=True)
    asked.add_argument("--concept", help="a concept of the version (through its prompts, for text-to-image)")
    asked.add_argument("--prompt", help="any text, for a text-to-image version")
    smp.add_argument("--version", help="registered version (default: production)")
    smp.add_argument("--n", type=int, default=16)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--intensity", type=float, default=1.0, help="scale every adapter's ODE horizon (0 = base)")
    smp.add_argument("--out", required=True, help="FILE.png for a grid, FILE.npy for the raw float32 samples")
    smp.set_defaults(func=cmd_sample)
    exp = sub.add_parser("export", help="write a registered version as a folder diffusers loads, with its provenance")
    exp.add_argument("version", help="registered version, or `production`")
    exp.add_argument("out", help="folder to write (must not exist, or be empty)")
    exp.add_argument(
        "--format",
        default="diffusers",
        choices=["diffusers", "lora", "merged"],
        help="diffusers: exact, custom UNet code; lora, merged (text-to-image): distilled, gated on the artefact",
    )
    exp.add_argument("--kohya", action="store_true", help="with --format lora: kohya's key layout (web UIs)")
    exp.add_argument(
        "--log-mlflow",
        action="store_true",
        help="with --format lora: also log it with MLflow's diffusers flavour, on the workspace's base "
        "(registered model <model_name>-lora)",
    )
    exp.set_defaults(func=cmd_export)
    ver = sub.add_parser("verify-export", help="re-check an export's hashes and sample its forgotten concepts")
    ver.add_argument("folder")
    ver.add_argument("--n", type=int, default=16, help="samples per check prompt (per concept: class-conditional)")
    ver.add_argument("--seed", type=int, default=0)
    ver.add_argument("--base", help="for a LoRA export: the Stable-Diffusion folder of the base it was fitted to")
    ver.set_defaults(func=cmd_verify_export)
    sub.add_parser("demo", help="queue the demo requests of the settings, run them, print the lineage").set_defaults(
        func=cmd_demo
    )
    return p


def main(argv: list[str] | None = None, environ: MutableMapping[str, str] = os.environ) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.params, environ)
        if args.workspace:
            settings = settings.override({"paths.workspace": str(Path(args.workspace).resolve())})
    except (SettingsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.params_file = Path(args.params).resolve()
    args.environ = environ
    configure_process(settings, environ)
    try:
        return args.func(args, settings)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, IntegrityError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        if not is_outage(error):
            raise
        print(
            f"unavailable: {outage_reason(error)}. Nothing was left half-done; run it again when the service is back",
            file=sys.stderr,
        )
        return OUTAGE


if __name__ == "__main__":
    sys.exit(main())
