import json

import pytest

from lethe.flows.cli import main
from lethe.models.concepts import CONCEPTS
from tests.conftest import PARAMS


@pytest.fixture
def workspace(tmp_path):
    return tmp_path / "ws"


def lethe(workspace, *args, environ=None):
    return main(["--params", str(PARAMS), "--workspace", str(workspace), *args], environ=dict(environ or {}))


def test_requests_are_added_listed_and_refused_with_reasons(capsys, workspace):
    assert lethe(workspace, "request", "add", "bag", "--anchor", "pullover", "--note", "ticket 17") == 0
    assert capsys.readouterr().out.strip() == "1"
    assert lethe(workspace, "request", "add", "bag") == 2
    assert "already queued as request 1" in capsys.readouterr().err
    assert lethe(workspace, "request", "add", "unicorn") == 2
    assert "unknown concept 'unicorn'" in capsys.readouterr().err
    assert lethe(workspace, "request", "add", "coat", "--anchor", "coat") == 2
    assert "must differ" in capsys.readouterr().err
    assert lethe(workspace, "request", "add", "coat", "--prompt", "a long coat") == 2
    assert "for text-to-image workspaces" in capsys.readouterr().err
    assert lethe(workspace, "request", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["concept"], r["anchor"], r["state"], r["note"]) for r in rows] == [
        (1, "bag", "pullover", "pending", "ticket 17")
    ]
    assert lethe(workspace, "concepts") == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == len(CONCEPTS) == 46
    assert any(line.startswith("bag") and "queued (request 1" in line for line in listing)
    assert (workspace / "queue.sqlite").is_file()


def test_workspace_flag_wins_over_the_environment(capsys, tmp_path):
    other, env_ws = tmp_path / "elsewhere", tmp_path / "from-env"
    assert lethe(other, "request", "add", "sandal", environ={"LETHE_PATHS__WORKSPACE": str(env_ws)}) == 0
    assert (other / "queue.sqlite").is_file() and not env_ws.exists()
    assert main(["--params", str(PARAMS), "request", "list"], environ={"LETHE_PATHS__WORKSPACE": str(env_ws)}) == 0
    assert (env_ws / "queue.sqlite").is_file()  # without the flag, the environment's workspace


def test_bad_settings_and_arguments_quote_what_the_user_gave(capsys, tmp_path, workspace):
    bad = tmp_path / "params.yaml"
    bad.write_text(PARAMS.read_text().replace("  steps: 200\n", "  stpes: 200\n"))
    assert main(["--params", str(bad), "concepts"], environ={}) == 2
    err = capsys.readouterr().err
    assert "train.stpes: unknown key" in err and "train.steps: Field required" in err
    assert main(["--params", str(tmp_path / "nope.yaml"), "concepts"], environ={}) == 2
    assert "nope.yaml' does not exist" in capsys.readouterr().err
    assert lethe(workspace, "concepts", environ={"LETHE_TRAIN__STEPS": "many"}) == 2
    assert "train.steps" in capsys.readouterr().err
    assert lethe(workspace, "sample", "--concept", "bag", "--out", str(tmp_path / "grid.jpg")) == 2
    err = capsys.readouterr().err
    assert "grid.jpg" in err and ".png or .npy" in err
    assert lethe(workspace, "show", "7") == 2
    assert "no version '7'" in capsys.readouterr().err
