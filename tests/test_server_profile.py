"""The server profile end to end on real servers, on loopback: PostgreSQL (queue, MLflow's backend store),
moto's S3 server (MLflow's artefacts, the DVC remote, the request inbox), `mlflow server` and `prefect server`.
Two workers, separate processes with separate workspaces as two machines would have, start at once; each
request enters through the inbox and is processed exactly once, in order; an empty third workspace pulls
production from the remote stores; the S3 secret appears in no log, tag, param, artefact or file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3_BUCKET, tiny_pipeline_settings, write_settings

pytestmark = pytest.mark.slow
SECRET = "lethe-s3-secret-0f1e2d3c"  # moto takes any key pair: a distinctive one, so a leak can be found


def worker(params: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lethe.flows.cli", "--params", str(params), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_workers_share_one_queue_registry_and_bucket(
    tmp_path, tiny_generator_dir, postgres_url, s3_endpoint, s3_bucket, monkeypatch
):
    from mlflow import MlflowClient

    from lethe.tasks.stores.queue import RequestQueue
    from tests.servers import create_database, mlflow_server, prefect_server

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    env = dict(os.environ) | {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": SECRET}
    name = tmp_path.name.lower()
    queue_url = create_database(postgres_url, f"queue_{name}")
    backend = create_database(postgres_url, f"mlflow_{name}").replace("postgresql://", "postgresql+psycopg://")
    s3 = s3_bucket
    for key, body in [
        ("inbox/001.json", b'{"concept": "trouser", "anchor": "dress", "note": "ticket 1"}'),
        ("inbox/002.json", b'{"concept": "bag", "anchor": "pullover", "note": "ticket 2"}'),
    ]:
        s3.put_object(Bucket=S3_BUCKET, Key=key, Body=body)

    server_env = env | {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    with (
        mlflow_server(backend, f"s3://{S3_BUCKET}/mlflow", tmp_path / "mlflow-server", server_env) as mlflow_uri,
        prefect_server(tmp_path / "prefect-server", env) as prefect_url,
    ):
        storage = {
            "storage.queue_url": queue_url,
            "storage.mlflow_uri": mlflow_uri,
            "storage.dvc_remote": f"s3://{S3_BUCKET}/dvc",
            "storage.s3_endpoint": s3_endpoint,
            "storage.inbox": f"s3://{S3_BUCKET}/inbox",
        }
        params = {}
        for machine in ("a", "b", "c"):
            root = tmp_path / f"machine-{machine}"
            root.mkdir()
            settings = tiny_pipeline_settings(root, tiny_generator_dir).override(storage)
            params[machine] = write_settings(settings, root / "params.yaml")
        worker_env = env | {"PREFECT_API_URL": f"{prefect_url}/api"}
        workers = [worker(params[m], worker_env, "run") for m in ("a", "b")]
        outputs = [w.communicate(timeout=900) for w in workers]
        codes = [w.returncode for w in workers]
        report = "\n".join(out + err for out, err in outputs)
        # one batch at a time across machines: one worker processed both, the other found the lock taken
        # (exit 3) or, started after it, found nothing left (processed 0)
        assert sorted(codes) in ([0, 0], [0, 3]), report
        assert report.count("processed 2 request(s): 2 promoted") == 1, report

        requests = RequestQueue(queue_url).list()
        assert [(r.id, r.concept, r.state, r.version) for r in requests] == [
            (1, "trouser", "done", "2"),
            (2, "bag", "done", "3"),
        ]
        client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
        model = client.search_registered_models()[0].name
        versions = sorted(client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version))
        assert [(v.version, v.tags.get("parent_version"), v.tags.get("request_id")) for v in versions] == [
            ("1", "", ""),
            ("2", "1", "1"),
            ("3", "2", "2"),
        ]
        assert client.get_model_version_by_alias(model, "production").version == "3"
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
            for item in page.get("Contents", [])
        ]
        assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in keys)  # models via the server
        assert sum(k.startswith("dvc/files/md5/") for k in keys) == 4  # two replay sets per request
        assert sorted(k for k in keys if k.startswith("inbox/")) == [
            "inbox/processed/001.json",
            "inbox/processed/002.json",
        ]

        # a third machine with an empty workspace pulls production from the remote stores alone
        pulled = worker(params["c"], worker_env, "pull")
        out, err = pulled.communicate(timeout=600)
        assert pulled.returncode == 0, out + err
        assert "version 3 is in" in out and "4 replay set(s) match their md5" in out
        samples = {}
        for machine in ("a", "c"):  # machine C samples production exactly as machine A does
            samples[machine] = tmp_path / f"machine-{machine}" / "trouser.npy"
            sampled = worker(
                params[machine],
                worker_env,
                "sample",
                "--concept",
                "trouser",
                "--n",
                "4",
                "--seed",
                "5",
                "--out",
                str(samples[machine]),
            )
            sample_out, sample_err = sampled.communicate(timeout=300)
            assert sampled.returncode == 0, sample_out + sample_err
            report += sample_out + sample_err
        assert samples["a"].read_bytes() == samples["c"].read_bytes()

        # the secret is nowhere it could be read back
        report += out + err
        assert SECRET not in report
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            assert SECRET not in repr(run.data.tags) + repr(run.data.params)
        for v in versions:
            assert SECRET not in repr(v.tags)
        for key in keys:
            assert SECRET.encode() not in s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read(), key
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
