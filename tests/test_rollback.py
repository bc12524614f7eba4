"""Rollback and roll-forward on a real MLflow registry: exact, reversible, refused where it must be."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def lineage(capsys) -> dict:
    capsys.readouterr()
    assert run_cli("lineage", "--json") == 0
    return {r["version"]: r for r in json.loads(capsys.readouterr().out)}


def test_rollback_restores_the_previous_production_bit_exactly(tiny_pipeline, prefect_harness, write_params,
                                                               monkeypatch, capsys, tmp_path):
    from tasks.queue import RequestQueue
    from tasks.settings import Workspace

    workspace, params = tiny_pipeline
    for concept in ("trouser", "digit_3"):
        assert run_cli("request", "add", concept) == 0
    assert run_cli("run") == 0
    # a third step that fails its gates: registered, never production
    params["gates"]["forget_acc_max"] = -1.0
    monkeypatch.setenv("LETHE_PARAMS", str(write_params(params)))
    assert run_cli("request", "add", "bag") == 0
    assert run_cli("run") == 0
    rows = lineage(capsys)
    assert [rows[v]["status"] for v in "1234"] == ["base", "superseded", "production", "rejected"]
    assert rows["4"]["tags"]["rejected"] == "true"

    before = tmp_path / "v2.npy"
    assert run_cli("sample", "--concept", "digit_3", "--version", "2", "--seed", "7", "--out", str(before)) == 0

    capsys.readouterr()
    assert run_cli("rollback", "--steps", "1", "--reason", "digit_3 step looked wrong") == 0
    out = capsys.readouterr().out
    assert "version 3 -> version 2" in out and "match the fingerprint" in out
    after = tmp_path / "prod.npy"
    assert run_cli("sample", "--concept", "digit_3", "--seed", "7", "--out", str(after)) == 0
    assert np.load(after).tobytes() == np.load(before).tobytes()  # bitwise

    rows = lineage(capsys)
    assert rows["2"]["aliases"] == ["production"] and rows["3"]["status"] == "rolled_back"
    tags = rows["3"]["tags"]
    assert tags["rolled_back_reason"] == "digit_3 step looked wrong" and tags["rolled_back_by"] and tags["rolled_back_at"]
    assert rows["3"]["version"] == "3"  # nothing deleted
    queue = RequestQueue(Workspace.resolve().queue_db)
    assert [(r.id, r.state) for r in queue.list()] == [(1, "done"), (2, "rolled_back"), (3, "failed")]

    # refused: a rejected version, a missing one, too many steps
    for args, message in ((("--to", "4"), "never passed its quality gates"), (("--to", "9"), "does not exist"),
                          (("--steps", "5"), "--steps must be between")):
        assert run_cli("rollback", *args) == 2
        assert message in capsys.readouterr().err
    assert lineage(capsys)["2"]["aliases"] == ["production"]

    # roll forward again, then back with --requeue
    assert run_cli("rollback", "--to", "3", "--reason", "it was fine") == 0
    assert queue.get(2).state == "done" and lineage(capsys)["3"]["status"] == "production"
    assert run_cli("rollback", "--steps", "2", "--requeue") == 0
    assert lineage(capsys)["1"]["aliases"] == ["production"]
    assert [(r.id, r.state) for r in queue.list()] == [(1, "pending"), (2, "pending"), (3, "failed")]
    assert run_cli("request", "retry", "3") == 0
    assert queue.get(3).state == "pending"

    # show: one version in full, with the commands that restore its replay sets
    capsys.readouterr()
    assert run_cli("show", "3") == 0
    shown = capsys.readouterr().out
    assert "version 3: rolled_back" in shown or "version 3: production" in shown
    assert "tag rolled_back_by" in shown and "dvc pull request-00002/attempt-1/forget.safetensors" in shown
    assert run_cli("show", "42") == 2

    # the report shows every version, with its grid and the lineage plot
    assert run_cli("report", "--out", str(tmp_path / "report")) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert all(f"Version {v}" in page for v in "1234") and "rolled_back" in page
    assert (tmp_path / "report" / "lineage.png").stat().st_size > 1000
    assert (tmp_path / "report" / "v3-samples.png").is_file()


def test_production_loads_through_mlflow_pyfunc(tiny_pipeline, prefect_harness, capsys, tmp_path):
    import mlflow.pyfunc

    from tasks.settings import Workspace

    workspace, params = tiny_pipeline
    assert run_cli("request", "add", "sandal", "--anchor", "sneaker") == 0
    assert run_cli("run") == 0
    mlflow.set_tracking_uri(Workspace.resolve().mlflow_uri)
    model = mlflow.pyfunc.load_model(f"models:/{params['registry']['model_name']}@production")
    images = model.predict(pd.DataFrame({"concept": ["sandal", "bag"], "n": [2, 3], "seed": [1, 1]}))
    assert images.shape == (5, 1, 16, 16) and images.dtype == np.float32
    cli = tmp_path / "cli.npy"
    assert run_cli("sample", "--concept", "bag", "--n", "3", "--seed", "1", "--out", str(cli)) == 0
    assert np.array_equal(np.load(cli), images[2:])
