"""The long kill run: `python -m tests.faults.kill_run` (>= 50 SIGKILLs over a 20-request run on the tiny
fixture model, with a real `prefect server` on loopback); the result goes to
benchmarks/results/kill-run.json, and BENCHMARKS.md quotes it.

Rounds alternate a kill at a named point of a step (kill_at.POINTS, in turn) and a kill from outside after a
random delay; a round whose batch finished before its kill counts as a round, not a kill. After every
`ceil(kills / (requests - 1))` rounds a clean round ("none") lets the current request finish, so the kills
reach the whole sequence, not only its first requests. Rounds go on until `--kills` processes were killed.
Then the remaining requests and one clean batch, and the final check: every invariant of harness.problems
after every round and at the end; every request done, except, when `--requests` is the number of concepts, the
last one, which must fail (the last concept leaves nothing to retain or steer to: it must fail with its reason,
not hang or pass). The committed result is from the 20-concept world, where 20 requests meant every concept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from lethe.models.concepts import CONCEPTS
from tests.conftest import tiny_generator, tiny_pipeline_settings, write_settings
from tests.faults.harness import ROOT, kill_rounds, state
from tests.faults.kill_at import POINTS
from tests.servers import prefect_server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-delay", type=float, default=12.0, help="latest random kill, seconds after start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kill-run.json"))
    args = parser.parse_args(argv)
    concepts = list(CONCEPTS)[: args.requests]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="lethe-kill-run-") as folder:
        folder = Path(folder)
        generator_dir = tiny_generator().save(folder / "tiny-generator")
        settings = tiny_pipeline_settings(folder, generator_dir)
        params = write_settings(settings, folder / "params.yaml")
        env = dict(os.environ)
        with prefect_server(folder / "prefect-server", env) as prefect_url:
            env["PREFECT_API_URL"] = f"{prefect_url}/api"
            rounds, found = kill_rounds_until(settings, params, env, concepts, args)
            requests, versions, production = state(settings)
    killed = sum(r.killed for r in rounds)
    final = {r.concept: r.state for r in requests}
    expected = {c: "done" for c in concepts}
    if len(concepts) == len(CONCEPTS):
        expected[concepts[-1]] = "failed"
    if final != expected:
        found.append(f"final states {final}, expected {expected}")
    result = {
        "command": "python -m tests.faults.kill_run " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "requests": len(concepts),
        "rounds": len(rounds),
        "kills": killed,
        "kills_by_point": dict(Counter(r.point for r in rounds if r.killed)),
        "rounds_finished_before_their_kill": sum(not r.killed for r in rounds if r.point != "none"),
        "clean_rounds": sum(r.point == "none" for r in rounds),
        "requests_reached_by_kills": max((r.requests_added for r in rounds if r.killed), default=0),
        "requests_killed_in": len({r.requests_added for r in rounds if r.killed}),
        "round_log": [
            {
                "point": r.point,
                "delay_s": r.delay,
                "killed": r.killed,
                "seconds": round(r.seconds, 1),
                "requests_added": r.requests_added,
            }
            for r in rounds
        ],
        "final_states": dict(Counter(final.values())),
        "versions": len(versions),
        "production": str(production.version) if production else None,
        "lost": len([c for c in concepts if c not in final]),
        "problems": found,
        "seconds": round(time.time() - start, 1),
        "failed_request_reason": next((r.reasons for r in requests if r.state == "failed"), None),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if not found and killed >= args.kills else 1


def kill_rounds_until(settings, params, env, concepts, args):
    """Rounds in slices (kill rounds, then one clean round that finishes the request they hit) until
    `args.kills` processes were killed, then the rest and a clean batch. The first round kills the base's
    registration; then named points and random delays in turn."""
    per_request = max(1, math.ceil(args.kills / max(1, len(concepts) - 1)))
    named = [p for p in POINTS if p != "base-registered"]
    points = ["base-registered"] + [
        named[i // 2 % len(named)] if i % 2 == 0 else "random" for i in range(4 * args.kills)
    ]
    rounds, found, added, position = [], [], [], 0
    while sum(r.killed for r in rounds) < args.kills and position < len(points):
        batch = points[position : position + per_request]
        position += len(batch)
        batch = batch + ["none"]
        more, problems = kill_rounds(
            settings, params, env, concepts, batch, args.seed + position, args.max_delay, added=added, finish=False
        )
        rounds, found = rounds + more, found + problems
    _, problems = kill_rounds(settings, params, env, concepts, [], args.seed, args.max_delay, added=added)
    return rounds, found + problems


if __name__ == "__main__":
    sys.exit(main())
