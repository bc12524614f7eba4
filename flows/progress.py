"""Progress lines for long loops (sampling, training), on stderr so they never mix with command output."""

from __future__ import annotations

import sys
import time


def reporter(label: str, every_seconds: float = 5.0):
    """A `progress(done, total, info=None)` callback that prints at most every few seconds, and at the end."""
    state = {"last": 0.0, "start": time.time()}

    def progress(done: int, total: int, info: dict | None = None) -> None:
        now = time.time()
        if done < total and now - state["last"] < every_seconds:
            return
        state["last"] = now
        extra = "  " + " ".join(f"{k} {v:.4g}" for k, v in info.items() if k != "step") if info else ""
        # not print(): inside a flow Prefect turns print into log records (log_prints), which the CLI keeps quiet
        sys.stderr.write(f"  {label}: {done}/{total} ({now - state['start']:.0f}s){extra}\n")
        sys.stderr.flush()

    return progress
