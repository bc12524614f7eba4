import json

import pytest

from flows.cli import main


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("LETHE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def test_requests_are_added_listed_and_refused_with_reasons(capsys, workspace):
    assert main(["request", "add", "bag", "--anchor", "pullover", "--note", "ticket 17"]) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert main(["request", "add", "bag"]) == 2
    assert "already queued as request 1" in capsys.readouterr().err
    assert main(["request", "add", "unicorn"]) == 2
    assert "unknown concept 'unicorn'" in capsys.readouterr().err
    assert main(["request", "add", "coat", "--anchor", "coat"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["request", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["concept"], r["anchor"], r["state"], r["note"]) for r in rows] == [
        (1, "bag", "pullover", "pending", "ticket 17")]
    assert main(["concepts"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 20
    assert any(line.startswith("bag") and "queued (request 1" in line for line in listing)
    assert (workspace / "queue.sqlite").is_file()


def test_workspace_flag_wins_over_the_environment(capsys, tmp_path):
    other = tmp_path / "elsewhere"
    assert main(["--workspace", str(other), "request", "add", "sandal"]) == 0
    assert (other / "queue.sqlite").is_file()
