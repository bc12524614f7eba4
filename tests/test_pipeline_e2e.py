"""One deletion request through real Prefect, a real MLflow SQLite registry and a real DVC repository."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Lethe, write_settings

pytestmark = pytest.mark.slow


def test_one_request_end_to_end(tiny_pipeline, prefect_harness, capsys):
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.stores.replay_sets import DatasetStore
    from lethe.tasks.workspace import Workspace

    run_cli, settings = tiny_pipeline, tiny_pipeline.settings
    workspace = settings.paths.workspace
    assert run_cli("request", "add", "trouser", "--anchor", "dress", "--note", "takedown #1") == 0
    assert capsys.readouterr().out.strip() == "1"
    assert run_cli("run") == 0
    out = capsys.readouterr().out
    assert "forget accuracy trouser" in out and "processed 1 request(s): 1 promoted" in out

    ws = Workspace.open(settings)
    registry = Registry(ws, settings.registry)
    versions = registry.versions()
    assert [str(v.version) for v in versions] == ["1", "2"]
    base, step = versions
    assert base.tags["kind"] == "base" and base.tags["forgotten"] == ""
    tags = step.tags
    assert (tags["request_id"], tags["concept"], tags["anchor"], tags["parent_version"]) == (
        "1",
        "trouser",
        "dress",
        "1",
    )
    assert tags["forgotten"] == "trouser" and tags["gate"] == "passed"
    # the recovery audit ran on the forgotten concept, with its budget recorded, and is in the step's summary
    assert 0.0 <= float(tags["recovery.trouser"]) <= 1.0
    assert json.loads(tags["recovery.budget"]) == settings.recovery.model_dump()
    assert "recovery attack, judged as the concept: trouser" in out
    assert "production" in registry.production().aliases and str(registry.production().version) == "2"

    # the adapter hash in the registry is the hash of what loads back, under the request's name
    _, stack = registry.load("2")
    assert stack.names == ["request-1"] and tags["adapter_name"] == "request-1"
    assert stack.sha256(["request-1"]) == tags["adapter_sha256"]
    # paths in tags are workspace-relative; the run carries the full settings and the replay sets as inputs
    assert tags["forget_path"] == "datasets/request-00001/attempt-1/forget.safetensors"
    run = registry.client.get_run(step.run_id)
    assert {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs} == {
        "forget": tags["forget_md5"],
        "retain": tags["retain_md5"],
    }
    logged = json.loads(
        Path(registry.client.download_artifacts(step.run_id, "settings.json", str(workspace))).read_text()
    )
    assert logged == json.loads(settings.model_dump_json())

    # the queue agrees
    request = RequestQueue(ws.queue_db).get(1)
    assert (request.state, request.version, request.anchor) == ("done", "2", "dress")

    # the replay sets are versioned: delete file and cache, pull them back byte-identical
    store = DatasetStore(ws.dvc_root, ws.dvc_remote)
    for name in ("forget", "retain"):
        ref = store.ref(ws.absolute(tags[f"{name}_path"]))
        assert ref.md5 == tags[f"{name}_md5"]
        original = ref.path.read_bytes()
        assert hashlib.md5(original).hexdigest() == ref.md5
        ref.path.unlink()
        shutil.rmtree(ws.dvc_root / ".dvc" / "cache")
        store.restore(ref.path)
        assert ref.path.read_bytes() == original

    # lineage for scripts
    assert run_cli("lineage", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["parent_version"], r["status"]) for r in rows] == [
        ("1", None, "base"),
        ("2", "1", "production"),
    ]
    assert rows[1]["request_id"] == 1 and rows[1]["concept"] == "trouser" and "forget_acc_max" in rows[1]["metrics"]

    # sampling is deterministic per seed and version; .npy carries the raw samples
    a, b, c = (workspace / n for n in ("a.png", "b.png", "c.npy"))
    for path in (a, b):
        assert run_cli("sample", "--concept", "trouser", "--n", "4", "--seed", "3", "--out", str(path)) == 0
    assert a.read_bytes() == b.read_bytes()
    assert run_cli("sample", "--concept", "trouser", "--n", "4", "--version", "1", "--out", str(c)) == 0
    raw = np.load(c)
    assert raw.shape == (4, 1, 16, 16) and raw.dtype == np.float32 and raw.min() >= -1 and raw.max() <= 1

    # a second machine: an empty workspace that shares only the remote stores (registry, DVC remote) pulls
    # production with its replay sets, checked against what was recorded, and samples the same bytes
    machine_b = workspace.parent / "machine-b"
    other = Lethe(
        write_settings(
            settings.override(
                {
                    "paths.workspace": str(machine_b),
                    "storage.mlflow_uri": ws.mlflow_uri,
                    "storage.dvc_remote": ws.dvc_remote,
                }
            ),
            workspace.parent / "machine-b.yaml",
        )
    )
    capsys.readouterr()
    assert other("pull") == 0
    assert "version 2 is in" in capsys.readouterr().out
    for name in ("forget", "retain"):
        assert (machine_b / tags[f"{name}_path"]).read_bytes() == ws.absolute(tags[f"{name}_path"]).read_bytes()
    (machine_b / tags["forget_path"]).write_bytes(b"tampered")  # a damaged copy is fetched again, not trusted
    assert other("pull", "2", "--json") == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["verified"] and [(s["set"], s["fetched"]) for s in pulled["replay_sets"]] == [
        ("forget", True),
        ("retain", False),
    ]
    assert (machine_b / tags["forget_path"]).read_bytes() == ws.absolute(tags["forget_path"]).read_bytes()
    assert other("sample", "--concept", "trouser", "--n", "4", "--seed", "3", "--out", str(machine_b / "a.png")) == 0
    assert (machine_b / "a.png").read_bytes() == a.read_bytes()
    assert other("pull", "7") == 2 and "no version" in capsys.readouterr().err

    # the step and the batch published Prefect markdown artefacts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["request-1"])))
        batch = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["lethe-batch"])))
    # the harness's Prefect server holds other tests' artefacts too: this test's are the newest of their keys
    step = max(found, key=lambda artifact: artifact.created)
    assert "forget `trouser`" in step.data and "promoted to production" in step.data
    newest = max(batch, key=lambda artifact: artifact.created)
    assert "| 1 | trouser | 1 | 2 | promoted |" in newest.data

    # a second request for the same concept is refused
    assert run_cli("request", "add", "trouser") == 2
    assert "already forgotten" in capsys.readouterr().err

    # a moved workspace still works: tags are relative, the DVC remote follows the workspace's settings
    moved = workspace.parent / "moved-ws"
    shutil.move(str(workspace), moved)
    capsys.readouterr()
    assert run_cli("--workspace", str(moved), "show", "2") == 0  # (global flag after --params)
    shown = capsys.readouterr().out
    assert f"cd {moved / 'datasets'} && dvc pull request-00001/attempt-1/forget.safetensors" in shown
    moved_ws = Workspace.open(settings.override({"paths.workspace": str(moved)}))
    forget = moved_ws.absolute(tags["forget_path"])
    original = forget.read_bytes()
    forget.unlink()
    shutil.rmtree(moved_ws.dvc_root / ".dvc" / "cache")
    DatasetStore(moved_ws.dvc_root, moved_ws.dvc_remote).restore(forget)
    assert forget.read_bytes() == original


def test_a_step_that_fails_its_gates_never_reaches_production(tiny_pipeline, prefect_harness, capsys):
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    run_cli = tiny_pipeline
    run_cli.change(gates__retain_ratio_min=1e9)  # impossible: every step fails
    assert run_cli("request", "add", "bag") == 0
    assert run_cli("run") == 0
    assert "REJECTED" in capsys.readouterr().out
    ws = Workspace.open(run_cli.settings)
    registry = Registry(ws, run_cli.settings.registry)
    assert str(registry.production().version) == "1"
    rejected = registry.version("2")
    assert rejected.tags["gate"] == "failed" and "retained accuracy fell" in rejected.tags["gate_reasons"]
    request = RequestQueue(ws.queue_db).get(1)
    assert request.state == "failed" and "retained accuracy fell" in request.reasons
    # the shipped ladder, one attempt per rung, each a rejected version, each automatic anchor a new one
    attempts = [registry.version(v) for v in ("2", "3", "4", "5")]
    assert [v.tags["attempt"] for v in attempts] == ["1", "2", "3", "4"] and all(
        v.tags["gate"] == "failed" for v in attempts
    )
    anchors = [a["anchor"] for a in request.attempt_log]
    assert len(set(anchors)) == 4 and [v.tags["anchor"] for v in attempts] == anchors
    # a new anchor, then adversarial training against the recovery attack as well, then twice the steps
    assert [(a["steps"], a["adversarial_rounds"]) for a in request.attempt_log] == [(6, 0), (6, 0), (6, 3), (12, 3)]
    assert [v.tags["attempt_changes"] for v in attempts] == ["", "anchor", "anchor,recovery", "anchor,recovery,steps"]
    rounds_run = [registry.client.get_run(v.run_id).data.metrics["adversarial_rounds_run"] for v in attempts]
    assert rounds_run == [0, 0, 3, 3]  # training ran the rounds the plan asked for
    assert "attempt 4" in request.reasons
    assert request.anchor is None  # still automatic: a retry starts from the automatic rule again
