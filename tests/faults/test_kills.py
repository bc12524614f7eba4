"""SIGKILL the batch at every named point of a step, and twice at random times, restarting it each time (the
reduced count CI runs; `python -m tests.faults.kill_run` runs >= 50 kills over 20 requests). After every round:
no request lost or doubled, no duplicate version, production on a version that passed its gates; at the end
every request done and every version its request's own (no orphan)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import tiny_pipeline_settings, write_settings
from tests.faults.harness import kill_rounds
from tests.faults.kill_at import POINTS

pytestmark = pytest.mark.slow


def test_ten_kills_lose_nothing_and_double_nothing(tmp_path, tiny_generator_dir):
    from tests.servers import prefect_server

    settings = tiny_pipeline_settings(tmp_path, tiny_generator_dir)
    params = write_settings(settings, tmp_path / "params.yaml")
    env = dict(os.environ)
    with prefect_server(tmp_path / "prefect-server", env) as prefect_url:
        env["PREFECT_API_URL"] = f"{prefect_url}/api"
        rounds, found = kill_rounds(
            settings,
            params,
            env,
            ["trouser", "digit_3", "bag"],
            [*POINTS, "random", "random"],
            seed=0,
            max_delay=25.0,
        )
    named = [r for r in rounds if r.point != "random"]
    assert all(r.killed for r in named), [(r.point, r.returncode, r.output[-1500:]) for r in named if not r.killed]
    assert not found, "\n".join(found)
