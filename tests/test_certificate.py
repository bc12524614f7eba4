"""`lethe certificate`: a self-contained page and JSON per fulfilled request, from the queue and the registry."""

from __future__ import annotations

import json
import re

import pytest

from lethe.models.concepts import CONCEPTS

pytestmark = pytest.mark.slow


def test_a_certificate_states_the_request_its_version_evidence_and_hashes(
    tiny_pipeline, prefect_harness, capsys, tmp_path
):
    run_cli = tiny_pipeline
    assert run_cli("request", "add", "trouser", "--anchor", "dress", "--note", "ticket 7 <b>by</b> Ann") == 0
    assert run_cli("request", "add", "bag") == 0
    assert run_cli("run", "--limit", "1") == 0
    capsys.readouterr()

    out = tmp_path / "certs"
    assert run_cli("certificate", "1", "--out", str(out), "--json") == 0
    facts = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "request-1.json").read_text())
    assert stored | {"written_at": None} == facts | {"written_at": None}
    assert facts["request"]["note"] == "ticket 7 <b>by</b> Ann" and facts["request"]["anchor"] == "dress"
    assert facts["version"]["version"] == "2" and facts["version"]["status"] == "production"
    assert [v["version"] for v in facts["version"]["lineage"]] == ["2", "1"]
    first = facts["evidence"]["rows"][0]
    n = facts["evidence"]["samples_per_concept"]
    assert first["concept"] == "trouser" and first["role"] == "forgotten by this request"
    assert first["interval95"][0] <= first["accuracy"] <= first["interval95"][1]
    assert first["judged"] == f"{round(first['accuracy'] * n)} of {n}"
    assert sorted(r["concept"] for r in facts["evidence"]["rows"]) == sorted(CONCEPTS)  # each concept once

    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    registry = Registry(Workspace.open(run_cli.settings), run_cli.settings.registry)
    tags = registry.version("2").tags
    assert facts["hashes"]["adapter_sha256"] == tags["adapter_sha256"]
    assert facts["hashes"]["model_files_sha256"] == tags["weights_sha256"]
    assert facts["hashes"]["forget_replay_set"]["md5"] == tags["forget_md5"]
    attack = facts["recovery_attack"]
    assert attack["audited"] and [r["concept"] for r in attack["rows"]] == ["trouser"]
    assert attack["rows"][0]["accuracy"] == float(tags["recovery.trouser"])
    assert attack["budget"] == run_cli.settings.recovery.model_dump() and attack["threshold"] == "1.0"

    page = (out / "request-1.html").read_text()
    assert "ticket 7 &lt;b&gt;by&lt;/b&gt; Ann" in page  # the note is text, never markup
    assert tags["adapter_sha256"] in page and tags["weights_sha256"] in page
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', page)  # the grid travels inside
    assert "lethe sample --version 2 --concept trouser" in page
    assert "attacked samples judged as it" in page

    # no certificate for a request that no promoted version fulfils
    assert run_cli("certificate", "2", "--out", str(out)) == 2
    assert "request 2 (bag) is pending" in capsys.readouterr().err
    assert not (out / "request-2.html").exists()
    assert run_cli("certificate", "9", "--out", str(out)) == 2
    assert "no request with id 9" in capsys.readouterr().err
