"""Long sequences in the pipeline, on real Prefect, MLflow and DVC. Consolidation: automatic in a batch and on
demand, gated, named in the lineage, resumable, at most once per parent, reversible bit for bit. The recovery
audit: a bounded rotation over the forgotten concepts, so a step's cost does not grow with their number."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def lineage(run_cli, capsys) -> dict:
    capsys.readouterr()
    assert run_cli("lineage", "--json") == 0
    return {r["version"]: r for r in json.loads(capsys.readouterr().out)}


def registry_of(run_cli):
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    settings = run_cli.settings
    return Registry(Workspace.open(settings), settings.registry)


def test_a_batch_consolidates_every_k_requests_and_rollback_undoes_it_exactly(tiny_pipeline, prefect_harness, capsys):
    from lethe.tasks.stores.queue import RequestQueue

    run_cli = tiny_pipeline
    run_cli.change(consolidate__every=2)
    for concept in ("trouser", "digit_3", "bag"):
        assert run_cli("request", "add", concept) == 0
    capsys.readouterr()
    assert run_cli("run") == 0
    out = capsys.readouterr().out
    assert "consolidation of version 3 = version 4, promoted to production" in out
    assert "processed 3 request(s): 3 promoted, 0 failed" in out  # a consolidation is not a request

    rows = lineage(run_cli, capsys)
    assert [rows[v]["status"] for v in "12345"] == ["base", "superseded", "superseded", "superseded", "production"]
    folded = rows["4"]["tags"]
    assert folded["kind"] == "consolidation" and rows["4"]["parent_version"] == "3"
    assert folded["folded_adapters"] == "request-1,request-2" and folded["folded_requests"] == "1,2"
    assert folded["forgotten"] == rows["3"]["tags"]["forgotten"] == "trouser,digit_3"
    assert folded["gate"] == "passed" and folded["trigger"].startswith("automatic")
    assert set(json.loads(folded["unexplained"])) == {"up_blocks.1"}
    assert 0.0 <= float(folded["recovery.trouser"]) <= 1.0 and "recovery.digit_3" in folded  # audited like a step
    assert rows["5"]["parent_version"] == "4"
    # each request recorded how often the judge named its anchor's samples (4 per concept) as the concept
    for version, concept in (("2", "trouser"), ("3", "digit_3"), ("5", "bag")):
        k, n = map(int, rows[version]["tags"]["anchor_confusion"].split("/"))
        assert n == 4 and 0 <= k <= n and rows[version]["tags"]["concept"] == concept

    registry = registry_of(run_cli)
    from lethe.tasks.operations.anchor_confusions import lineage_confusions

    confusions = lineage_confusions(registry, "5")  # through the fold: every request it carries
    assert set(confusions) == {"trouser", "digit_3", "bag"}
    assert confusions["bag"] == tuple(map(int, rows["5"]["tags"]["anchor_confusion"].split("/")))
    _, stack = registry.load("5")
    assert stack.names == ["consolidated-v3", "request-3"]  # the new request trains on the folded model
    assert stack.sha256(["consolidated-v3"]) == folded["adapter_sha256"]
    _, four = registry.load("4")
    assert four.names == ["consolidated-v3"] and four.slots["consolidated-v3"].targets == ["up_blocks.1"]
    capsys.readouterr()
    assert run_cli("lineage") == 0
    assert "(consolidated)" in capsys.readouterr().out

    # on demand: production (folded + request-3) folds again, carrying every request; then nothing is left
    assert run_cli("consolidate") == 0
    out = capsys.readouterr().out
    assert "consolidation of version 5 = version 6, promoted to production" in out
    assert "carrying requests 1, 2, 3" in out
    assert registry.version("6").tags["folded_adapters"] == "consolidated-v3,request-3"
    assert registry.version("6").tags["folded_requests"] == "1,2,3"
    assert run_cli("consolidate") == 2
    assert "nothing to consolidate" in capsys.readouterr().err

    # rollback across a consolidation: exact, and no request is undone by undoing a consolidation
    assert run_cli("rollback", "--steps", "1", "--reason", "check the unfolded model") == 0
    out = capsys.readouterr().out
    assert "version 6 -> version 5" in out and "match the fingerprint" in out
    queue = RequestQueue(run_cli.workspace / "queue.sqlite")
    assert [r.state for r in queue.list()] == ["done", "done", "done"]
    assert run_cli("rollback", "--steps", "2") == 0  # 5 -> 3: request 3's step goes, the first fold with it
    assert [r.state for r in queue.list()] == ["done", "done", "rolled_back"]
    assert run_cli("rollback", "--to", "6") == 0
    assert "match the fingerprint" in capsys.readouterr().out
    assert [r.state for r in queue.list()] == ["done", "done", "done"]


def test_a_rejected_consolidation_leaves_production_and_is_retried_only_requests_later(
    tiny_pipeline, prefect_harness, capsys
):
    run_cli = tiny_pipeline
    for concept in ("trouser", "digit_3"):
        assert run_cli("request", "add", concept) == 0
    assert run_cli("run") == 0
    run_cli.change(gates__retain_ratio_min=1e9)  # no model can pass
    capsys.readouterr()
    assert run_cli("consolidate") == 1
    assert "consolidation of version 3 = version 4, REJECTED: retained accuracy" in capsys.readouterr().out
    registry = registry_of(run_cli)
    assert str(registry.production().version) == "3" and registry.version("4").tags["rejected"] == "true"
    run_cli.change(gates__retain_ratio_min=0.0, consolidate__every=2)
    assert run_cli("run") == 0  # due by count, but this parent's consolidation was decided: not tried again
    assert "consolidation" not in capsys.readouterr().out
    assert run_cli("consolidate") == 1  # on demand too: the decision is read back, not made again
    assert "resumed, version 4 not promoted: retained accuracy" in capsys.readouterr().out
    assert [str(v.version) for v in registry.versions()] == ["1", "2", "3", "4"]
    assert str(registry.production().version) == "3"

    # the next request leaves 3 unconsolidated, but the fold was rejected only one request ago: no try
    run_cli.change(gates__retain_ratio_min=0.0, consolidate__every=2, consolidate__retry_after=2)
    assert run_cli("request", "add", "bag") == 0
    capsys.readouterr()
    assert run_cli("run") == 0
    assert "consolidation" not in capsys.readouterr().out
    assert str(registry.production().version) == "5"
    assert run_cli("request", "add", "sandal") == 0  # two requests after the rejection: tried again
    assert run_cli("run") == 0
    assert "consolidation of version 6 = version 7, promoted to production" in capsys.readouterr().out
    assert registry.version("7").tags["folded_requests"] == "1,2,3,4"


def test_a_consolidation_registered_before_a_crash_is_promoted_by_the_next_batch(
    tiny_pipeline, prefect_harness, capsys, monkeypatch
):
    import lethe.flows.consolidate as consolidate_flow

    run_cli = tiny_pipeline
    run_cli.change(consolidate__every=2)
    for concept in ("trouser", "digit_3"):
        assert run_cli("request", "add", concept) == 0

    def dies(registry, version):
        raise RuntimeError("process killed between registering and promoting")

    monkeypatch.setattr(consolidate_flow, "promote_task", dies)
    capsys.readouterr()
    assert run_cli("run") == 0  # the requests are done; the consolidation failed and production stays
    out = capsys.readouterr().out
    assert "processed 2 request(s): 2 promoted" in out and "process killed" in out
    registry = registry_of(run_cli)
    assert str(registry.production().version) == "3" and registry.version("4").tags["gate"] == "passed"
    monkeypatch.undo()
    assert run_cli("run") == 0
    assert "consolidation of version 3: resumed, version 4 promoted" in capsys.readouterr().out
    assert str(registry.production().version) == "4"


def test_each_step_audits_its_concept_and_the_earlier_ones_audited_longest_ago(tiny_pipeline, prefect_harness):
    run_cli = tiny_pipeline
    run_cli.change(recovery__concepts_per_step=2)
    for concept in ("trouser", "digit_3", "bag", "digit_7"):
        assert run_cli("request", "add", concept) == 0
    assert run_cli("run") == 0
    registry = registry_of(run_cli)

    def audited(version):
        return sorted(
            k.split(".", 1)[1]
            for k in registry.version(version).tags
            if k.startswith("recovery.") and k != "recovery.budget"
        )

    assert audited("2") == ["trouser"]
    assert audited("3") == ["digit_3", "trouser"]  # two forgotten: both
    assert audited("4") == ["bag", "trouser"]  # its own, and of the two audited at 3 the first forgotten
    assert audited("5") == ["digit_3", "digit_7"]  # digit_3 was last audited longest ago (version 3)
