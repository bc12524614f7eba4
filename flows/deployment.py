"""The nightly batch: a Prefect deployment of `process_queue` on a process work pool, with a cron schedule.

Pure functions for the CLI (`lethe schedule`): create the work pool, create or update the deployment
(`lethe-process-queue/<name>`, same name = same deployment), describe it with its next runs, trigger a run now.

This is the deployment's only definition (there is no prefect.yaml): its name, pool, cron and time zone
come from the `schedule` settings, and its parameters pin the params file and the workspace by absolute
path. Its concurrency limit is one, and a run that starts while another is running is cancelled
(CANCEL_NEW); the batch lock stops a `lethe run` beside it.

They talk to the Prefect API the current settings point at: set PREFECT_API_URL to a running server
(`prefect server start`) before the process imports prefect, or use `prefect.settings.temporary_settings`.
The server's scheduler creates the scheduled runs; a worker started from any directory on this machine
(`prefect worker start --pool lethe-pool`) runs them from the installed `lethe.flows` package.
"""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as _utc_tz
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from lethe.tasks.settings import ScheduleSettings

FLOW_NAME = "lethe-process-queue"
FLOWS_FOLDER = Path(__file__).resolve().parent  # the installed lethe.flows package
ENTRYPOINT = "unlearn.py:process_queue"


def full_name(name: str) -> str:
    """`lethe-process-queue/<name>`, the form the Prefect API and `prefect deployment run` use."""
    return name if "/" in name else f"{FLOW_NAME}/{name}"


def validate_cron(cron: str, timezone: str = "UTC") -> None:
    """Raise ValueError (with the reason) unless `cron` is a five-field cron expression Prefect accepts and
    `timezone` an IANA time zone name."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    fields = str(cron).split()
    if len(fields) != 5:
        raise ValueError(
            f"invalid cron expression {cron!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week), e.g. '0 2 * * *' for 02:00 every day; got {len(fields)}"
        )
    try:
        ZoneInfo(timezone)
    except Exception:
        raise ValueError(f"unknown time zone {timezone!r}: use an IANA name such as 'UTC' or 'Europe/Paris'")
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as error:
        reasons = "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in error.errors())
        raise ValueError(f"invalid cron expression {cron!r}: {reasons}") from None
    try:  # cronsim (a Prefect dependency) also refuses expressions that can never fire, such as '0 2 30 2 *'
        from cronsim import CronSim, CronSimError
    except ImportError:
        return
    try:
        CronSim(cron, datetime.now(ZoneInfo(timezone)))
    except CronSimError as error:
        raise ValueError(f"invalid cron expression {cron!r}: {error}") from None


def ensure_work_pool(name: str):
    """The process work pool `name`, created (with the process worker's default job template) if missing.
    Raises ValueError if a pool of that name exists with another type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            create = WorkPoolCreate(
                name=name,
                type=ProcessWorker.type,
                base_job_template=ProcessWorker.get_default_base_job_template(),
                description="Lethe: runs the unlearning batch flow as a local process",
            )
            try:
                pool = client.create_work_pool(create)
            except ObjectAlreadyExists:  # created meanwhile by someone else
                pool = client.read_work_pool(name)
    if pool.type != ProcessWorker.type:
        raise ValueError(
            f"work pool {name!r} exists with type {pool.type!r}; the nightly batch needs a "
            f"{ProcessWorker.type!r} pool (pick another --pool name)"
        )
    return pool


def deploy_nightly(
    schedule: ScheduleSettings,
    params_file: str | Path,
    workspace: str | Path,
    cron: str | None = None,
    timezone: str | None = None,
    paused: bool | None = None,
) -> UUID:
    """Create or update (same name: same deployment, same id) the deployment `lethe-process-queue/<name>` of
    `process_queue` on the process work pool `schedule.pool`, on `cron` in `timezone` (the settings' unless
    given). Returns its id.

    The params file and the workspace are pinned as absolute paths in the deployment's parameters; the
    worker's environment may still override settings (LETHE_<SECTION>__<KEY>). `paused=None` keeps the current
    state (a paused deployment stays paused: a plain re-apply would resume it); a new one is active.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.flows import Flow
    from prefect.schedules import Cron

    cron = cron or schedule.cron
    timezone = timezone or schedule.timezone
    validate_cron(cron, timezone)
    name = schedule.name
    params_file = Path(params_file).resolve()
    if not params_file.is_file():
        raise FileNotFoundError(f"params file {str(params_file)!r} does not exist")
    workspace = str(Path(workspace).resolve())
    ensure_work_pool(schedule.pool)
    if paused is None:
        paused = _current_paused_state(name)
    flow = Flow.from_source(source=str(FLOWS_FOLDER), entrypoint=ENTRYPOINT)
    if flow.name != FLOW_NAME:
        raise RuntimeError(f"{ENTRYPOINT} is flow {flow.name!r}, expected {FLOW_NAME!r}")
    # to_deployment + apply is what Flow.deploy does without an image, minus its console output
    deployment = flow.to_deployment(
        name=name,
        work_pool_name=schedule.pool,
        schedules=[Cron(cron, timezone=timezone, slug=f"{name}-cron")],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        parameters={"params_file": str(params_file), "workspace": workspace},
        job_variables={"env": {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}},
        description=f"Lethe {name} batch: process every pending deletion request of {workspace}.",
        tags=["lethe", name],
        paused=paused,
    )
    deployment_id = deployment.apply(work_pool_name=schedule.pool)
    remove_stale_runs(name)
    return UUID(str(deployment_id))


def from_replaced_schedule(run, deployment) -> bool:
    """Whether `run` was made by the server's scheduler from a schedule `deployment` no longer has. Updating a
    deployment deletes its auto-scheduled runs, but a scheduler pass that read the old schedule can still
    insert one right after: it would start a batch at the old time."""
    made_by = getattr(run.created_by, "id", None)
    return bool(run.auto_scheduled and made_by) and str(made_by) not in {str(s.id) for s in deployment.schedules}


def remove_stale_runs(name: str) -> int:
    """Delete the deployment's scheduled runs that a replaced schedule made (`from_replaced_schedule`);
    returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        deployment = _read_deployment(client, name)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        stale = [r for r in runs if from_replaced_schedule(r, deployment)]
        for run in stale:
            client.delete_flow_run(run.id)
    return len(stale)


def replaced_schedule_reason(flow_run_id) -> str | None:
    """Why the flow run `flow_run_id` must not start a batch (a replaced schedule made it), or None; a run
    started by hand, by `lethe run` or by the current schedule is never refused."""
    from prefect.client.orchestration import get_client

    if flow_run_id is None:
        return None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        if not run.auto_scheduled or run.deployment_id is None:
            return None
        deployment = client.read_deployment(run.deployment_id)
    if not from_replaced_schedule(run, deployment):
        return None
    return (
        f"flow run {run.name} was scheduled for {run.expected_start_time} by a schedule that deployment "
        f"{deployment.name} no longer has (it was updated since): no batch runs"
    )


def _current_paused_state(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return bool(client.read_deployment_by_name(full_name(name)).paused)
        except ObjectNotFound:
            return False


def _read_deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(full_name(name))
    except ObjectNotFound:
        raise LookupError(f"no deployment {full_name(name)!r} (create it with deploy_nightly / `lethe schedule`)")


def _cron_times(cron: str, timezone: str, after: datetime, n: int) -> list[datetime]:
    from cronsim import CronSim

    times = []
    for t in CronSim(cron, after.astimezone(ZoneInfo(timezone))):
        times.append(t)
        if len(times) >= n:
            break
    return times


def describe_schedule(name: str, n: int = 5) -> dict[str, Any]:
    """The deployment and its next `n` runs, as a JSON-able dict.

    `next_runs` holds {"time": ISO time in the schedule's time zone, "flow_run_id": id or None}: first the
    runs the server's scheduler has already created (state Scheduled, auto-scheduled), then, where there are
    fewer than `n`, times computed from the cron expression (flow_run_id None). Empty when the deployment is
    paused or its schedule inactive: then nothing runs by itself.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    now = datetime.now(_utc_tz.utc)
    with get_client(sync_client=True) as client:
        deployment = _read_deployment(client, name)
        crons = [s for s in deployment.schedules if getattr(s.schedule, "cron", None)]
        schedule = next((s for s in crons if s.active), crons[0] if crons else None)
        runs = []
        if schedule is not None:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=now),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=max(n, 1) * 4,
            )
    info: dict[str, Any] = {
        "name": full_name(name),
        "deployment": deployment.name,
        "id": str(deployment.id),
        "cron": None,
        "timezone": None,
        "schedule_active": False,
        "pool": deployment.work_pool_name,
        "work_queue": deployment.work_queue_name,
        "parameters": dict(deployment.parameters or {}),
        "env": dict((deployment.job_variables or {}).get("env") or {}),
        "paused": bool(deployment.paused),
        "entrypoint": deployment.entrypoint,
        "api_url": PREFECT_API_URL.value(),
        "next_runs": [],
        "concurrency_limit": getattr(deployment.global_concurrency_limit, "limit", None),
        "collision_strategy": str(getattr(deployment.concurrency_options, "collision_strategy", None) or ""),
    }
    if schedule is None:
        return info
    cron, tz = schedule.schedule.cron, schedule.schedule.timezone or "UTC"
    info.update(cron=cron, timezone=tz, schedule_active=bool(schedule.active))
    if deployment.paused or not schedule.active:
        return info
    zone = ZoneInfo(tz)
    next_runs = [
        {"time": r.expected_start_time.astimezone(zone).isoformat(), "flow_run_id": str(r.id)}
        for r in runs
        if r.auto_scheduled and not from_replaced_schedule(r, deployment)  # those start no batch
    ][:n]
    if len(next_runs) < n:
        last = datetime.fromisoformat(next_runs[-1]["time"]) if next_runs else now
        next_runs += [
            {"time": t.isoformat(), "flow_run_id": None} for t in _cron_times(cron, tz, last, n - len(next_runs))
        ]
    info["next_runs"] = next_runs
    return info


def trigger_now(name: str, parameters: dict | None = None) -> UUID:
    """Create a flow run of the deployment to start now (a worker on its pool picks it up); returns its id
    without waiting. `parameters` override the deployment's defaults (e.g. {"limit": 1})."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        _read_deployment(client, name)  # a clear error for a missing deployment
    flow_run = run_deployment(full_name(name), parameters=parameters or {}, timeout=0)
    return flow_run.id
