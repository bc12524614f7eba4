"""`python -m tests.faults.kill_at POINT LETHE-ARGS...`: the `lethe` CLI, SIGKILLed by itself the first time it
reaches POINT (a real kill: no handler, no cleanup, no flushed buffers). POINT "none" runs it unchanged, for
kills from outside at random times. The points are the moments the issue names: during replay, training,
dataset versioning, registration, the alias move and the queue update, plus the base's registration."""

from __future__ import annotations

import functools
import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after(owner, name: str, when=lambda *a, **k: True) -> None:
    """Replace owner.name with a wrapper that runs it, then dies if `when(*args, **kwargs)`."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def kill_before(owner, name: str) -> None:
    def wrapper(*args, **kwargs):
        die()

    setattr(owner, name, wrapper)


def arm(point: str) -> None:
    import mlflow

    import lethe.flows.unlearn as unlearn
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.stores.replay_sets import DatasetStore

    points = {
        "base-registered": lambda: kill_after(Registry, "register", lambda self, key, **k: key == "base"),
        "replay": lambda: kill_before(unlearn, "replay_task"),
        "dataset-versioning": lambda: kill_after(
            DatasetStore, "save", lambda self, request_id, attempt, name, tensors: name == "forget"
        ),
        "training": lambda: kill_before(unlearn, "train_adapter_task"),
        "run-logged": lambda: kill_after(mlflow.MlflowClient, "log_artifacts"),
        "version-created": lambda: kill_after(mlflow.MlflowClient, "create_model_version"),
        "alias-moved": lambda: kill_after(Registry, "promote"),
        "queue-updated": lambda: kill_after(RequestQueue, "complete"),
        "attempt-rejected": lambda: kill_after(
            Registry, "register", lambda self, key, **k: k.get("tags", {}).get("gate") == "failed"
        ),
        "attempt-escalated": lambda: kill_after(RequestQueue, "escalate"),
        "none": lambda: None,
    }
    if point not in points:
        raise SystemExit(f"unknown kill point {point!r}; known: {', '.join(points)}")
    points[point]()


POINTS = (
    "base-registered",
    "replay",
    "dataset-versioning",
    "training",
    "run-logged",
    "version-created",
    "alias-moved",
    "queue-updated",
)
LADDER_POINTS = ("attempt-rejected", "attempt-escalated")  # reached only when an attempt fails its gates

if __name__ == "__main__":
    arm(sys.argv[1])
    from lethe.flows.cli import main

    sys.exit(main(sys.argv[2:]))
