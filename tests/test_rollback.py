"""Rollback and roll-forward on a real MLflow registry: exact, reversible, refused where it must be."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PARAMS

pytestmark = pytest.mark.slow


def lineage(run_cli, capsys) -> dict:
    capsys.readouterr()
    assert run_cli("lineage", "--json") == 0
    return {r["version"]: r for r in json.loads(capsys.readouterr().out)}


def test_rollback_restores_the_previous_production_bit_exactly(tiny_pipeline, prefect_harness, capsys, tmp_path):
    from lethe.tasks.stores.queue import RequestQueue

    run_cli = tiny_pipeline
    for concept in ("trouser", "digit_3"):
        assert run_cli("request", "add", concept) == 0
    assert run_cli("run") == 0
    # a third step that fails its gates: registered, never production
    run_cli.change(gates__retain_ratio_min=1e9, escalation__attempts=1)  # one attempt: one rejected version
    assert run_cli("request", "add", "bag") == 0
    assert run_cli("run") == 0
    rows = lineage(run_cli, capsys)
    assert [rows[v]["status"] for v in "1234"] == ["base", "superseded", "production", "rejected"]
    assert rows["4"]["tags"]["rejected"] == "true"

    before = tmp_path / "v2.npy"
    assert run_cli("sample", "--concept", "digit_3", "--version", "2", "--seed", "7", "--out", str(before)) == 0

    capsys.readouterr()
    assert run_cli("rollback", "--steps", "1", "--reason", "digit_3 step looked wrong", "--by", "alice") == 0
    out = capsys.readouterr().out
    assert "version 3 -> version 2" in out and "match the fingerprint" in out
    after = tmp_path / "prod.npy"
    assert run_cli("sample", "--concept", "digit_3", "--seed", "7", "--out", str(after)) == 0
    assert np.load(after).tobytes() == np.load(before).tobytes()  # bitwise

    rows = lineage(run_cli, capsys)
    assert rows["2"]["aliases"] == ["production"] and rows["3"]["status"] == "rolled_back"
    tags = rows["3"]["tags"]
    assert tags["rolled_back_reason"] == "digit_3 step looked wrong" and tags["rolled_back_by"] == "alice"
    assert tags["rolled_back_at"]
    assert rows["3"]["version"] == "3"  # nothing deleted
    queue = RequestQueue(run_cli.workspace / "queue.sqlite")
    assert [(r.id, r.state) for r in queue.list()] == [(1, "done"), (2, "rolled_back"), (3, "failed")]

    # refused: a rejected version, a missing one, too many steps
    for args, message in (
        (("--to", "4"), "never passed its quality gates"),
        (("--to", "9"), "version '9' does not"),
        (("--steps", "5"), "--steps must be between"),
    ):
        assert run_cli("rollback", *args) == 2
        assert message in capsys.readouterr().err
    assert lineage(run_cli, capsys)["2"]["aliases"] == ["production"]

    # roll forward again, then back with --requeue
    assert run_cli("rollback", "--to", "3", "--reason", "it was fine") == 0
    assert queue.get(2).state == "done" and lineage(run_cli, capsys)["3"]["status"] == "production"
    assert run_cli("rollback", "--steps", "2", "--requeue") == 0
    assert lineage(run_cli, capsys)["1"]["aliases"] == ["production"]
    assert [(r.id, r.state) for r in queue.list()] == [(1, "pending"), (2, "pending"), (3, "failed")]
    assert run_cli("request", "retry", "3", "--reason", "the rollback was a mistake") == 0
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
    assert all(f"<h2>Version {v}" in page for v in "1234") and "rolled_back" in page
    assert page.count("<tr>") == 5 and "<table>" in page  # header + one row per version, rendered by markdown
    assert "recovery attack (worst)" in page  # the audit's worst success per version, in the lineage table
    assert (tmp_path / "report" / "lineage.png").stat().st_size > 1000
    assert (tmp_path / "report" / "v3-samples.png").is_file() and not (tmp_path / "report" / "samples").exists()


def test_production_loads_through_mlflow_pyfunc_with_pinned_requirements_only(tiny_pipeline, prefect_harness, tmp_path):
    import mlflow.pyfunc

    run_cli = tiny_pipeline
    assert run_cli("request", "add", "sandal", "--anchor", "sneaker") == 0
    assert run_cli("run") == 0
    settings = run_cli.settings
    uri = f"sqlite:///{settings.paths.workspace / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # a user's script, not Lethe: Lethe itself never sets the global URI
    try:
        model_uri = f"models:/{settings.registry.model_name}@production"
        model = mlflow.pyfunc.load_model(model_uri)
        images = model.predict(pd.DataFrame({"concept": ["sandal", "bag"], "n": [2, 3], "seed": [1, 1]}))
        with pytest.raises(Exception, match="concept"):  # the logged signature is enforced
            model.predict(pd.DataFrame({"thing": ["bag"]}))
        requirements = open(mlflow.pyfunc.get_model_dependencies(model_uri)).read().split()
    finally:
        mlflow.set_tracking_uri(None)
    assert images.shape == (5, 1, 16, 16) and images.dtype == np.float32
    cli = tmp_path / "cli.npy"
    assert run_cli("sample", "--concept", "bag", "--n", "3", "--seed", "1", "--out", str(cli)) == 0
    assert np.array_equal(np.load(cli), images[2:])
    # every requirement is an exact pin of this project's locked tree; none is resolved by a bare name
    locked = dict(line.split("==") for line in (PARAMS.parent / "constraints.txt").read_text().split() if "==" in line)
    pins = dict(r.split("==") for r in requirements)
    assert all("==" in r for r in requirements) and pins and "lethe" not in pins
    assert all(locked.get(name) == version for name, version in pins.items()), (pins, requirements)


def test_registering_again_after_a_lost_answer_finds_the_same_version(tiny_pipeline, prefect_harness):
    """The server wrote the version, the answer was lost: the task's retry must not make a second one."""
    from lethe.models.adapter_stack import AdapterStack
    from lethe.models.generator import Generator
    from lethe.tasks.stores.registry import Registry, register_version_task
    from lethe.tasks.workspace import Workspace

    settings = tiny_pipeline.settings
    registry = Registry(Workspace.open(settings), settings.registry)
    original = registry.client.create_model_version
    calls = []

    def write_then_fail(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        if len(calls) == 1:
            raise ConnectionError("connection reset after the write")
        return calls[-1]

    registry.client.create_model_version = write_then_fail
    generator = Generator.from_folder(settings.paths.base)
    kwargs = dict(
        key="request-9-attempt-1",
        generator=generator,
        adapters=AdapterStack(),
        sampling=settings.sampling.model_dump(),
        run_name="retry",
        settings={"a": 1},
        metrics={"m": 1.0},
        tags={"kind": "test"},
        description="retried",
        files={},
    )
    from prefect import flow

    @flow(name="register-once")
    def register():
        return register_version_task.with_options(retry_delay_seconds=0)(registry, **kwargs)

    version = register()
    assert len(calls) == 1  # the retry found the version by its key instead of writing again
    assert [str(v.version) for v in registry.versions()] == [version]
    assert registry.version(version).tags["registration_key"] == "request-9-attempt-1"
    runs = registry.client.search_runs([registry.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # nor a second run
    assert registry.register(**kwargs) == version
