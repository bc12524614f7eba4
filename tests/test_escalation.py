"""Every request fulfilled, or a person told why, on real Prefect, MLflow and DVC and the shipped base and judge.

The first attempt is made deliberately weak: the new adapter's horizon (adapter.intensity) is 0, so the new
version draws exactly what its parent draws and the forget gate rejects it, whatever the seeds. The ladder's
intensity rung restores the horizon (escalation.intensity 2.0, the shipped value) and the second attempt passes.
A ladder without that rung can only fail: the request ends failed with every attempt's reasons, and a webhook
receiver on loopback gets the alert and the batch summary."""

from __future__ import annotations

import getpass
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import PARAMS, Lethe, write_settings

pytestmark = pytest.mark.slow

TOKEN = "hook-token-5f1c2a"  # in the webhook URL only: it must never reach a log, tag, param or artefact


def small_prepared(source, target, per_concept: int = 24):
    """The first `per_concept` images of every concept of the shipped prepared splits: the KID gate is off
    here, and the real images it would compare with (every test image of the retained concepts) would
    otherwise cost more than the step; the recovery audit's attacker images come from `train`."""
    import torch
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    for split in ("test", "train"):
        tensors = load_file(source / f"{split}.safetensors")
        labels = tensors["labels"]
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_concept] for c in labels.unique()])
        save_file({"images": tensors["images"][keep].contiguous(), "labels": labels[keep].contiguous()},
                  target / f"{split}.safetensors")  # fmt: skip
    return target


def shipped_ladder_settings(tmp_path, **changes):
    """The shipped base and judge with budgets of seconds; the forget gate is the only one that can reject."""
    from lethe.tasks.settings import load_settings

    shipped = load_settings(PARAMS)
    settings = shipped.override(
        {
            "paths.workspace": str(tmp_path / "ws"),
            "paths.prepared": str(small_prepared(shipped.paths.prepared, tmp_path / "prepared")),
            "sampling.steps": 8,
            "distill.replay_per_concept": 8,
            "train.steps": 150,
            "train.pool_rows": 512,
            "eval.samples_per_concept": 16,
            "eval.kid_subset": 16,
            "eval.device": "cpu",
            "recovery.images": 8,
            "recovery.steps": 2,
            "recovery.batch_size": 4,
            "recovery.samples": 8,
            "recovery.concepts_per_step": None,
            "consolidate.every": 0,
            "adapter.intensity": 0.0,  # the deliberately weak first attempt
            "escalation.intensity": 2.0,
            "escalation.ladder": ["intensity"],
            "escalation.attempts": 3,
            "gates.forget_acc_max": 0.10,
            "gates.retain_ratio_min": 0.0,
            "gates.kid_max_ratio": 1e9,
            "gates.recovery_acc_max": 1.0,
            **changes,
        }
    )
    return Lethe(write_settings(settings, tmp_path / "params.yaml"))


def registry_and_queue(run_cli):
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    ws = Workspace.open(run_cli.settings)
    return Registry(ws, run_cli.settings.registry), RequestQueue(ws.queue_location)


class Receiver:
    """A webhook endpoint on loopback that keeps every POST body."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token={TOKEN}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_an_exhausted_ladder_fails_with_every_reason_and_notifies(tmp_path, prefect_harness, capsys, caplog):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    receiver = Receiver()
    try:
        CustomWebhookNotificationBlock(
            name="lethe-test", url=receiver.url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
        ).save("lethe-test-hook", overwrite=True)
        # a ladder of one rung that cannot help: both attempts keep the horizon at 0; the second trains against
        # the recovery attack (rounds of 2 attack steps, to keep it short)
        run_cli = shipped_ladder_settings(
            tmp_path,
            **{
                "escalation.ladder": ["recovery"],
                "train.steps": 4,
                "train.adversarial.attack_steps": 2,
                "train.adversarial.pool_rows": 32,
                "notify.block": "custom-webhook/lethe-test-hook",
            },
        )
        assert run_cli("request", "add", "trouser", "--anchor", "dress") == 0
        capsys.readouterr()
        caplog.clear()
        assert run_cli("run") == 0
        out = capsys.readouterr()
    finally:
        receiver.close()
    registry, queue = registry_and_queue(run_cli)
    request = queue.get(1)
    assert request.state == "failed" and request.attempts == 2
    assert [(a["steps"], a["adversarial_rounds"]) for a in request.attempt_log] == [(4, 0), (4, 3)]
    assert "attempt 1 (as asked" in request.reasons and "attempt 2 (attempt 1 failed its gates" in request.reasons
    assert "forget" in request.reasons and "the ladder's 2 attempt(s) are used" in request.reasons
    assert str(registry.production().version) == "1"  # neither attempt became production
    second = registry.version(request.attempt_log[1]["version"])
    assert second.tags["attempt_changes"] == "recovery" and second.tags["attempt_adversarial_rounds"] == "3"
    assert registry.client.get_run(second.run_id).data.metrics["adversarial_rounds_run"] == 3  # training did
    assert "3 adversarial rounds" in request.reasons

    subjects = [b["subject"] for b in receiver.bodies]
    assert "Lethe: request 1 (trouser) failed" in subjects
    assert any(s.startswith("Lethe batch: 0 done, 1 failed") for s in subjects)
    alert = next(b["body"] for b in receiver.bodies if b["subject"].endswith("failed"))
    assert "attempt 1" in alert and "attempt 2" in alert and "lethe request approve" in alert

    # the failed request is a failed task in Prefect, with its reason; the summary is a table artefact
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        outcomes = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="request-outcome")))
        table = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["lethe-batch-summary"]))
        )
    failed = [t for t in outcomes if t.state.is_failed() and "request 1 (trouser) failed" in (t.state.message or "")]
    assert failed and "attempt 2" in failed[-1].state.message
    assert any("trouser" in json.dumps(a.data) and "flagged: failed" in json.dumps(a.data) for a in table)

    # the token in the webhook URL is nowhere: logs, output, tags, params, artefacts
    seen = [out.out, out.err, caplog.text, json.dumps([a.data for a in table], default=str)]
    for v in registry.versions():
        run = registry.client.get_run(v.run_id) if v.run_id else None
        seen += [json.dumps(v.tags), json.dumps(run.data.params if run else {})]
    assert all(TOKEN not in text for text in seen)


def test_a_kill_mid_ladder_resumes_without_repeating_or_skipping_an_attempt(tmp_path, capsys):
    from tests.faults.harness import run_lethe
    from tests.servers import prefect_server

    run_cli = shipped_ladder_settings(tmp_path)
    params = run_cli.params_file
    env = dict(os.environ)
    with prefect_server(tmp_path / "prefect-server", env) as prefect_url:
        env["PREFECT_API_URL"] = f"{prefect_url}/api"
        add = ["request", "add", "trouser", "--anchor", "dress", "--due", "2099-01-31"]
        added = run_lethe(params, env, "none", add, None, 120)
        assert added.returncode == 0, added.output[-2000:]
        rounds = [
            run_lethe(params, env, point, ["run"], None, 600) for point in ("attempt-rejected", "attempt-escalated")
        ]
        assert all(r.killed for r in rounds), [r.output[-2000:] for r in rounds]
        last = run_lethe(params, env, "none", ["run"], None, 600)
        assert last.returncode == 0, last.output[-3000:]
    registry, queue = registry_and_queue(run_cli)
    request = queue.get(1)
    assert request.state == "done" and request.attempts == 2 and request.due_at.startswith("2099-01-31")
    assert [(a["attempt"], a["passed"]) for a in request.attempt_log] == [(1, False), (2, True)]
    keys = sorted(v.tags.get("attempt", "-") for v in registry.versions() if v.tags.get("request_id") == "1")
    assert keys == ["1", "2"]  # one version per attempt: nothing trained twice, nothing skipped
    assert str(registry.production().version) == request.version

    # the outcome a ladder has without kills: attempt 1 rejected as asked, attempt 2 passes with the intensity rung
    first, second = request.attempt_log
    assert first["intensity"] == 0.0 and any("forget" in r for r in first["reasons"]) and first["why"] == "as asked"
    assert (second["intensity"], second["changes"]) == (2.0, ["intensity"])
    versions = {str(v.version): v for v in registry.versions()}
    assert set(versions) == {"1", "2", "3"} and request.version == "3"
    rejected, promoted = versions["2"].tags, versions["3"].tags
    assert rejected["gate"] == "failed" and rejected["attempt"] == "1" and rejected["attempt_why"] == "as asked"
    assert promoted["gate"] == "passed" and promoted["attempt"] == "2" and promoted["attempt_changes"] == "intensity"
    assert promoted["parent_version"] == rejected["parent_version"] == "1"  # a failed attempt never becomes a parent
    assert rejected["forget_path"] != promoted["forget_path"]  # each attempt's replay sets are versioned apart
    metrics = registry.client.get_run(versions["3"].run_id).data.metrics
    assert 0 < metrics["request_to_production_hours"] < 1
    assert "request_to_production_hours" not in registry.client.get_run(versions["2"].run_id).data.metrics

    assert run_cli("request", "list") == 0
    listing = capsys.readouterr().out
    assert "2099-01-31" in listing and " done " in listing
    assert run_cli("request", "add", "bag", "--due", "2001-01-01") == 2  # a deadline already past
    assert "already past" in capsys.readouterr().err


def test_people_approve_cancel_and_retry_on_record(tmp_path, prefect_harness, capsys):
    run_cli = shipped_ladder_settings(tmp_path, **{"escalation.attempts": 1, "train.steps": 4})
    assert run_cli("request", "add", "trouser", "--anchor", "dress") == 0
    assert run_cli("request", "add", "bag") == 0
    assert run_cli("run", "--limit", "1") == 0
    registry, queue = registry_and_queue(run_cli)
    assert queue.get(1).state == "failed" and queue.get(1).version == "2"
    capsys.readouterr()

    # refused, and nothing changes: a version that is not an attempt of the request, a request not failed
    assert run_cli("request", "approve", "1", "--version", "1", "--reason", "looks fine") == 2
    assert "not an attempt of request 1" in capsys.readouterr().err
    assert run_cli("request", "approve", "2", "--version", "2", "--reason", "looks fine") == 2
    assert "only a failed request can be approved" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("request", "approve", "1", "--version", "2")  # no reason: argparse refuses
    assert queue.get(1).state == "failed" and str(registry.production().version) == "1" and not queue.decisions()

    assert run_cli("request", "approve", "1", "--version", "2", "--reason", "legal signed off", "--by", "ana") == 0
    shown = capsys.readouterr().out
    assert "forget_acc_max" in shown and "gate_reasons" in shown  # the gate numbers, shown before the promotion
    assert queue.get(1).state == "done" and str(registry.production().version) == "2"
    tags = registry.version("2").tags
    assert tags["approved_by"] == "ana" and tags["approved_reason"] == "legal signed off"
    assert any(k.startswith("decision.") and "approved by ana" in v for k, v in tags.items())
    assert run_cli("request", "approve", "1", "--version", "2", "--reason", "again") == 2
    assert "done already" in capsys.readouterr().err
    assert run_cli("lineage") == 0
    assert "decision: approved by ana" in capsys.readouterr().out
    assert run_cli("show", "2") == 0
    assert "approved_by = ana" in capsys.readouterr().out
    assert run_cli("certificate", "1", "--out", str(tmp_path / "cert"), "--json") == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["request"]["decisions"][0]["action"] == "approve"

    assert run_cli("request", "cancel", "2", "--reason", "withdrawn by the requester", "--by", "ben") == 0
    assert queue.get(2).state == "cancelled"
    assert run_cli("request", "cancel", "2", "--reason", "twice") == 2
    assert run_cli("request", "retry", "2", "--anchor", "trouser", "--reason", "x") == 2  # forgotten anchor
    assert "forgotten already" in capsys.readouterr().err
    assert run_cli("request", "retry", "2", "--anchor", "pullover", "--steps", "300", "--reason", "ask again") == 0
    retried = queue.get(2)
    assert retried.state == "pending" and retried.overrides == {"anchor": "pullover", "steps": 300}
    assert retried.ladder_start == retried.attempts + 1
    assert [(d.action, d.by_user) for d in queue.decisions()] == [
        ("approve", "ana"),
        ("cancel", "ben"),
        ("retry", getpass.getuser()),
    ]
