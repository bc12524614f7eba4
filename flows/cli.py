"""`lethe`: the command line of the unlearning pipeline.

Global options --workspace (or LETHE_WORKSPACE) and --params (or LETHE_PARAMS) pick the state folder and the
settings; Prefect's local state goes to the workspace too unless PREFECT_HOME or PREFECT_API_URL is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _setup_environment(args) -> None:
    from tasks.settings import Workspace

    ws = Workspace.resolve(args.workspace)
    os.environ["LETHE_WORKSPACE"] = str(ws.root)
    if args.params:
        os.environ["LETHE_PARAMS"] = str(Path(args.params).resolve())
    if "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_HOME"] = str(ws.root / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _queue():
    from tasks.queue import RequestQueue
    from tasks.settings import Workspace

    return RequestQueue(Workspace.resolve().queue_db)


def known_concepts() -> list[str]:
    from tasks.settings import load_params, project_path

    base = project_path(load_params().get("paths", {}).get("base", "artifacts/base"))
    meta = base / "lethe.json"
    if not meta.is_file():
        raise SystemExit(f"no base generator at {base}: run `make demo` (or `dvc repro`) first")
    return json.loads(meta.read_text())["concepts"]


def cmd_concepts(args) -> int:
    from models.concepts import DOMAINS

    queue = _queue()
    state = {r.concept: f"forgotten (request {r.id}, version {r.version})" for r in queue.list(["done"])}
    state.update({r.concept: f"queued (request {r.id}, {r.state})" for r in queue.list(["pending", "running"])})
    for name in known_concepts():
        print(f"{name:<12} {DOMAINS.get(name, '-'):<9} {state.get(name, 'retained')}")
    return 0


def cmd_request_add(args) -> int:
    from tasks.queue import RequestRefused

    queue = _queue()
    try:
        request = queue.add(args.concept, args.anchor, args.note or "", known=known_concepts(),
                            forgotten=queue.forgotten())
    except RequestRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 2
    print(request.id)
    return 0


def cmd_request_list(args) -> int:
    requests = _queue().list()
    if args.json:
        print(json.dumps([r.to_dict() for r in requests], indent=2))
        return 0
    print(f"{'id':>4}  {'state':<8} {'concept':<12} {'anchor':<12} {'version':>7}  note / reasons")
    for r in requests:
        print(f"{r.id:>4}  {r.state:<8} {r.concept:<12} {r.anchor or '(auto)':<12} {r.version or '-':>7}  "
              f"{r.reasons or r.note}")
    return 0


def cmd_run(args) -> int:
    from flows.unlearn import format_report, process_queue
    from tasks.batch_lock import BatchAlreadyRunning

    try:
        reports = process_queue(limit=args.limit)
    except BatchAlreadyRunning as busy:
        print(f"not started: {busy}", file=sys.stderr)
        return 3
    for report in reports:
        if "version" in report:
            print(format_report(report))
        else:
            print(f"request {report['request_id']} ({report['concept']}) failed: {'; '.join(report['reasons'])}")
    print(f"processed {len(reports)} request(s): "
          f"{sum(r['promoted'] for r in reports)} promoted, {sum(not r['promoted'] for r in reports)} failed")
    return 0


def cmd_lineage(args) -> int:
    from tasks.lineage import format_lineage, lineage

    rows = lineage()
    print(json.dumps(rows, indent=2) if args.json else format_lineage(rows))
    return 0


def cmd_sample(args) -> int:
    from tasks.sampling import sample_version

    out = sample_version(args.concept, args.version, args.n, args.seed, args.intensity, args.out)
    print(out)
    return 0


def cmd_demo(args) -> int:
    from tasks.queue import RequestRefused
    from tasks.settings import load_params

    queue = _queue()
    for item in load_params()["demo"]["requests"]:
        try:
            request = queue.add(item["concept"], item.get("anchor"), "demo request", known=known_concepts(),
                                forgotten=queue.forgotten())
            print(f"queued request {request.id}: forget {request.concept} -> {request.anchor or '(auto)'}")
        except RequestRefused as refused:
            print(f"skipped: {refused}")
    status = cmd_run(argparse.Namespace(limit=None))
    print()
    cmd_lineage(argparse.Namespace(json=False))
    return status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lethe", description="Continual unlearning for diffusion generators.")
    p.add_argument("--workspace", help="state folder (default: LETHE_WORKSPACE or ./workspace in the project)")
    p.add_argument("--params", help="params file (default: LETHE_PARAMS or params.yaml in the project)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("concepts", help="list concepts and whether they are retained, queued or forgotten") \
        .set_defaults(func=cmd_concepts)
    request = sub.add_parser("request", help="add or list deletion requests").add_subparsers(dest="action",
                                                                                              required=True)
    add = request.add_parser("add", help="queue a deletion request; prints its id")
    add.add_argument("concept")
    add.add_argument("--anchor", help="concept to steer to (default: nearest retained concept, chosen at run time)")
    add.add_argument("--note", help="free text kept with the request (who asked, why)")
    add.set_defaults(func=cmd_request_add)
    listing = request.add_parser("list", help="all requests with their state")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_request_list)
    run = sub.add_parser("run", help="process pending requests now (the flow the nightly deployment runs)")
    run.add_argument("--limit", type=int, help="process at most N requests")
    run.set_defaults(func=cmd_run)
    lin = sub.add_parser("lineage", help="registered versions, parents, metrics and aliases")
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(func=cmd_lineage)
    smp = sub.add_parser("sample", help="generate images of a concept from a registered version")
    smp.add_argument("--concept", required=True)
    smp.add_argument("--version", help="registered version (default: production)")
    smp.add_argument("--n", type=int, default=16)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--intensity", type=float, default=1.0, help="scale every adapter's ODE horizon (0 = base)")
    smp.add_argument("--out", required=True, help="FILE.png for a grid, FILE.npy for the raw float32 samples")
    smp.set_defaults(func=cmd_sample)
    sub.add_parser("demo", help="queue the demo requests from params.yaml, run them, print the lineage") \
        .set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_environment(args)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
