"""Outages, on real services: an `mlflow server` stopped in the middle of a step and at the start of a batch,
an S3 endpoint that does not answer (the DVC remote), a full disk under the workspace (a real tmpfs), a queue
locked by another process. Each time: retries first, then a clean stop with the reason (exit 4), nothing
half-written, the request pending with its reason and resumed when the service is back."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import S3_BUCKET, Lethe, tiny_pipeline_settings, write_settings
from tests.servers import free_port, mlflow_server

pytestmark = pytest.mark.slow
FAST_CLIENT = {  # MLflow's own HTTP retries (its documented switches), cut from minutes to seconds for a test
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def queue_rows(cli: Lethe) -> list[tuple]:
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.workspace import Workspace

    return [
        (r.id, r.state, r.attempts, r.version) for r in RequestQueue(Workspace.open(cli.settings).queue_location).list()
    ]


def versions(url: str) -> list[tuple]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    model = client.search_registered_models()[0].name
    return sorted(
        (int(v.version), v.tags.get("request_id"), v.tags.get("registration_key"))
        for v in client.search_model_versions(f"name = '{model}'")
    )


def test_the_mlflow_server_going_away_mid_step_leaves_the_request_waiting(
    tmp_path, tiny_generator_dir, prefect_harness, monkeypatch, capsys
):
    import lethe.flows.unlearn as unlearn

    for key, value in FAST_CLIENT.items():
        monkeypatch.setenv(key, value)
    port, store = free_port(), tmp_path / "mlflow-store"
    store.mkdir()
    server = contextlib.ExitStack()
    url = server.enter_context(
        mlflow_server(f"sqlite:///{store / 'mlflow.db'}", str(store / "artifacts"), tmp_path / "s1", {}, port)
    )
    settings = tiny_pipeline_settings(tmp_path, tiny_generator_dir).override({"storage.mlflow_uri": url})
    cli = Lethe(write_settings(settings, tmp_path / "params.yaml"))
    assert cli("request", "add", "trouser") == 0 and cli("run") == 0
    assert cli("request", "add", "bag") == 0
    capsys.readouterr()

    train = unlearn.train_adapter_task

    def server_dies_then_train(*args, **kwargs):
        server.close()  # the MLflow server stops while the adapter trains; registration comes next
        return train(*args, **kwargs)

    monkeypatch.setattr(unlearn, "train_adapter_task", server_dies_then_train)
    assert cli("run") == 4
    err = capsys.readouterr().err
    assert "request 2 (bag) is pending again, waiting:" in err and "Traceback" not in err
    assert queue_rows(cli) == [(1, "done", 1, "2"), (2, "pending", 0, None)]
    monkeypatch.setattr(unlearn, "train_adapter_task", train)

    # a batch that starts while the server is still down touches nothing
    assert cli("run") == 4
    assert "unavailable:" in capsys.readouterr().err
    assert queue_rows(cli) == [(1, "done", 1, "2"), (2, "pending", 0, None)]

    with mlflow_server(f"sqlite:///{store / 'mlflow.db'}", str(store / "artifacts"), tmp_path / "s2", {}, port):
        assert versions(url) == [(1, "", "base"), (2, "1", "request-1-attempt-1")]  # nothing half-registered
        assert cli("run") == 0  # the service is back: the request resumes, on the same attempt
        assert queue_rows(cli) == [(1, "done", 1, "2"), (2, "done", 1, "3")]
        assert versions(url) == [(1, "", "base"), (2, "1", "request-1-attempt-1"), (3, "2", "request-2-attempt-1")]


def test_an_unreachable_s3_remote_leaves_the_request_waiting(
    tmp_path, tiny_generator_dir, prefect_harness, s3_endpoint, s3_bucket, capsys
):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = tiny_pipeline_settings(tmp_path, tiny_generator_dir).override(
        {"storage.dvc_remote": f"s3://{S3_BUCKET}/dvc", "storage.s3_endpoint": dead}
    )
    cli = Lethe(write_settings(settings, tmp_path / "params.yaml"))
    assert cli("request", "add", "trouser") == 0
    capsys.readouterr()
    assert cli("run") == 4
    err = capsys.readouterr().err
    assert "request 1 (trouser) is pending again, waiting:" in err
    assert queue_rows(cli) == [(1, "pending", 0, None)]
    cli.change(storage__s3_endpoint=s3_endpoint)  # the endpoint answers again
    assert cli("run") == 0
    assert queue_rows(cli) == [(1, "done", 1, "2")]
    keys = [o["Key"] for o in s3_bucket.list_objects_v2(Bucket=S3_BUCKET).get("Contents", [])]
    assert sum(k.startswith("dvc/files/md5/") for k in keys) == 2  # both replay sets, once each


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MiB file system (tmpfs) for the workspace; skipped where this process may not mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_leaves_the_request_waiting_and_production_intact(
    tmp_path, small_disk, tiny_generator_dir, prefect_harness, monkeypatch, capsys
):
    import lethe.flows.unlearn as unlearn

    settings = tiny_pipeline_settings(tmp_path, tiny_generator_dir).override(
        {"paths.workspace": str(small_disk / "ws")}
    )
    cli = Lethe(write_settings(settings, tmp_path / "params.yaml"))
    assert cli("request", "add", "trouser") == 0 and cli("run") == 0
    assert cli("request", "add", "bag") == 0
    filler = small_disk / "filler"
    train = unlearn.train_adapter_task

    def disk_fills_then_train(*args, **kwargs):  # something else fills the disk while the adapter trains
        with open(filler, "wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        return train(*args, **kwargs)

    monkeypatch.setattr(unlearn, "train_adapter_task", disk_fills_then_train)
    capsys.readouterr()
    status = cli("run")
    err = capsys.readouterr().err
    assert status == 4, err
    last = err.strip().splitlines()[-1]  # MLflow and Prefect log their own tracebacks above Lethe's last word
    assert last.startswith(("unavailable:", "request 2 (bag) is pending again")), err
    assert "No space left on device" in last or "disk is full" in last, err
    monkeypatch.setattr(unlearn, "train_adapter_task", train)
    filler.unlink()
    rows = queue_rows(cli)
    assert rows[0] == (1, "done", 1, "2") and rows[1][1] in ("pending", "running") and rows[1][3] is None
    assert cli("lineage", "--json") == 0
    production = [r["version"] for r in json.loads(capsys.readouterr().out) if r["status"] == "production"]
    assert production == ["2"]  # untouched by the failed step
    assert cli("run") == 0  # space again: the request goes through
    assert queue_rows(cli) == [(1, "done", 1, "2"), (2, "done", 1, "3")]


def test_a_locked_queue_is_waited_for_then_refused_with_the_reason(tmp_path, capsys):
    from lethe.tasks.outages import ServiceUnavailable
    from lethe.tasks.stores.queue import RequestQueue

    path = tmp_path / "queue.sqlite"
    RequestQueue(path).add("coat")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    with pytest.raises(ServiceUnavailable, match="stayed locked for 1 s"):
        RequestQueue(path, lock_wait_seconds=1).add("bag")
    threading.Timer(1.5, lambda: holder.execute("COMMIT")).start()  # ... which ends a moment later
    assert RequestQueue(path, lock_wait_seconds=10).add("bag").id == 2  # waited for, not refused
    assert [r.concept for r in RequestQueue(path).list()] == ["coat", "bag"]
    holder.close()
    assert Path(path).is_file()
