"""Kill a batch, restart it, and check after every round that nothing was lost, doubled or promoted unchecked.

Shared by the CI test (`test_kills.py`, a reduced count) and the long run (`kill_run.py`, >= 50 kills)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Round:
    point: str  # a kill point of kill_at.py, or "random"
    delay: float | None  # seconds before an outside kill (random rounds)
    killed: bool
    returncode: int
    seconds: float
    output: str = field(repr=False, default="")
    requests_added: int = 0  # requests queued when the round ended (the kills' reach into the sequence)


def run_lethe(params: Path, env: dict, point: str, args: list[str], delay: float | None, timeout: float) -> Round:
    """One `lethe` process: killed at `point`, or from outside after `delay` seconds, or let finish."""
    command = [sys.executable, "-m", "tests.faults.kill_at", point, "--params", str(params), *args]
    start = time.time()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=delay if delay is not None else timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the batch and anything it started
        output, _ = process.communicate()
        if delay is None:
            raise AssertionError(f"lethe {' '.join(args)} ran past {timeout} s:\n{output[-4000:]}") from None
    return Round(point, delay, process.returncode == -signal.SIGKILL, process.returncode, time.time() - start, output)


def state(settings) -> tuple[list, list, object]:
    """(requests, versions, production) as the queue and the registry have them now."""
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    ws = Workspace.open(settings)
    registry = Registry(ws, settings.registry)
    return RequestQueue(ws.queue_location).list(), registry.versions(), registry.production()


def problems(settings, added: list[str], final: bool) -> list[str]:
    """Every broken invariant, as a sentence. At any time: each added request is in the queue once, in order;
        at most one is running; no two versions share a registration key (no duplicate); a done or failed
        request's version is the only version of its current attempt; production passed its gates and holds
        exactly the concepts of the done requests (and, killed between the alias move and the queue update, of
    the interrupted one). At the end (`final`): nothing pending or running, and every
        non-base version is the recorded version of its request (no orphan)."""
    from lethe.tasks.stores.queue import DONE, FAILED, PENDING, RUNNING

    requests, versions, production = state(settings)
    found = []
    if [r.concept for r in requests] != added:
        found.append(f"queue holds {[r.concept for r in requests]}, not the added {added}")
    if sum(r.state == RUNNING for r in requests) > 1:
        found.append("more than one request is running")
    keys = Counter(v.tags.get("registration_key") for v in versions)
    found += [f"{n} versions share registration key {k}" for k, n in keys.items() if n > 1]
    by_request = {}
    for v in versions:
        if v.tags.get("request_id"):
            by_request.setdefault(int(v.tags["request_id"]), []).append(v)
    for r in requests:
        mine = by_request.get(r.id, [])
        attempt = [v for v in mine if v.tags.get("registration_key") == f"request-{r.id}-attempt-{r.attempts}"]
        if r.state == DONE and [str(v.version) for v in attempt] != [r.version]:
            found.append(f"request {r.id} is done with version {r.version}; its attempt has {len(attempt)} version(s)")
        if r.state == FAILED and r.version and [str(v.version) for v in attempt] != [r.version]:
            found.append(f"request {r.id} failed with version {r.version}, which its attempt did not register")
        if final and r.state in (PENDING, RUNNING):
            found.append(f"request {r.id} is still {r.state} after a clean run")
        if final:
            orphans = [str(v.version) for v in mine if str(v.version) != r.version]
            if orphans:
                found.append(f"request {r.id} ({r.state}, version {r.version}) has orphan version(s) {orphans}")
    if production is not None:
        if production.tags.get("gate") != "passed":
            found.append(f"production is version {production.version}, whose gate is {production.tags.get('gate')}")
        held = [c for c in production.tags.get("forgotten", "").split(",") if c]
        done = [r.concept for r in requests if r.state == DONE]
        # killed between the alias move and the queue update: production is the running request's version
        done += [
            r.concept
            for r in requests
            if r.state in (PENDING, RUNNING) and r.id in by_request and production.tags.get("request_id") == str(r.id)
        ]
        if sorted(held) != sorted(done):
            found.append(f"production {production.version} forgets {held}; the done requests are {done}")
    elif any(r.state == DONE for r in requests):
        found.append("requests are done but there is no production version")
    return found


def next_pending(settings, concepts: list[str], added: list[str], params: Path, env: dict) -> None:
    """Keep one request waiting: add the next concept when nothing is pending or running."""
    from lethe.tasks.stores.queue import PENDING, RUNNING

    requests, _, _ = state(settings)
    if any(r.state in (PENDING, RUNNING) for r in requests) or len(added) == len(concepts):
        return
    added.append(concepts[len(added)])
    add_request(params, env, added[-1])


def add_request(params: Path, env: dict, concept: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lethe.flows.cli", "--params", str(params), "request", "add", concept],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def kill_rounds(
    settings,
    params: Path,
    env: dict,
    concepts: list[str],
    points: list[str],
    seed: int,
    max_delay: float,
    log=print,
    added: list[str] | None = None,
    finish: bool = True,
) -> tuple[list[Round], list[str]]:
    """One round per entry of `points` (a kill point, or "random" for a kill from outside after a uniform
    delay in [1, max_delay] s), each followed by the invariant check; then the remaining requests, one clean
    batch and the final check (`finish`). `added` (the concepts queued so far, in order) carries over between
    calls. Returns the rounds and the problems found (empty = every invariant held)."""
    rng = random.Random(seed)
    added = [] if added is None else added
    rounds, found = [], []
    for number, point in enumerate(points, 1):
        next_pending(settings, concepts, added, params, env)
        delay = rng.uniform(1.0, max_delay) if point == "random" else None
        result = run_lethe(params, env, "none" if point == "random" else point, ["run"], delay, timeout=900)
        result.point = point
        result.requests_added = len(added)
        rounds.append(result)
        now = problems(settings, added, final=False)
        log(
            f"round {number} ({point}{'' if delay is None else f' after {delay:.1f} s'}): "
            f"{'killed' if result.killed else f'exit {result.returncode}'} in {result.seconds:.1f} s; "
            f"{len(added)} request(s) added; {'ok' if not now else now}"
        )
        if not result.killed and result.returncode != 0:
            found.append(f"round {number} ({point}) exited {result.returncode}: {result.output[-2000:]}")
        found += [f"after round {number} ({point}): {p}" for p in now]
    if not finish:
        return rounds, found
    while len(added) < len(concepts):  # the rest of the requests, then one clean batch drains the queue
        added.append(concepts[len(added)])
        add_request(params, env, added[-1])
    final = run_lethe(params, env, "none", ["run"], None, timeout=1800)
    log(f"clean run: exit {final.returncode} in {final.seconds:.1f} s")
    if final.returncode != 0:
        found.append(f"the clean run exited {final.returncode}: {final.output[-2000:]}")
    found += [f"at the end: {p}" for p in problems(settings, added, final=True)]
    return rounds, found
