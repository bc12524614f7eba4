"""Bad input through the CLI, as a user would type it: each case is refused with exit status 2 and a message
that names the problem, and the queue is exactly as it was before (issue 13's bad-input table; the inbox's
own cases are in test_request_inbox.py, the queue's state machine in test_queue.py)."""

import json

import pytest

from lethe.flows.cli import main
from tests.conftest import PARAMS

CASES = [  # (what, CLI arguments after the workspace, environment, expected message)
    ("unknown concept", ["request", "add", "unicorn"], {}, "unknown concept 'unicorn'"),
    ("empty concept", ["request", "add", ""], {}, "unknown concept ''"),
    ("path-like concept", ["request", "add", "../trouser"], {}, "unknown concept '../trouser'"),
    ("control character in concept", ["request", "add", "tro\x1buser"], {}, "unknown concept 'tro\\x1buser'"),
    ("concept in another case", ["request", "add", "TROUSER"], {}, "unknown concept 'TROUSER'"),
    ("concept with a space", ["request", "add", " trouser"], {}, "unknown concept ' trouser'"),
    ("anchor = concept", ["request", "add", "coat", "--anchor", "coat"], {}, "must differ"),
    ("unknown anchor", ["request", "add", "coat", "--anchor", "unicorn"], {}, "unknown anchor 'unicorn'"),
    ("duplicate request", ["request", "add", "bag"], {}, "already queued as request 1"),
    ("queued concept as anchor", ["request", "add", "coat", "--anchor", "bag"], {}, None),
    ("oversized note", ["request", "add", "coat", "--note", "x" * 2001], {}, "2001 characters; at most 2000"),
    ("control character in note", ["request", "add", "coat", "--note", "a\x07b"], {}, "control character"),
    ("prompts on a class model", ["request", "add", "coat", "--prompt", "a coat"], {}, "for text-to-image"),
    ("setting out of range", ["request", "add", "coat"], {"LETHE_TRAIN__STEPS": "0"}, "train.steps"),
    ("setting of the wrong type", ["request", "add", "coat"], {"LETHE_TRAIN__STEPS": "many"}, "train.steps"),
    ("unknown setting", ["request", "add", "coat"], {"LETHE_TRAIN__STPES": "5"}, "train.stpes"),
    ("unknown command", ["forget", "coat"], {}, "invalid choice: 'forget'"),
    ("rollback without a registry", ["rollback", "--to", "42"], {}, None),
]


def lethe(workspace, *args, environ=None):
    return main(["--params", str(PARAMS), "--workspace", str(workspace), *args], environ=dict(environ or {}))


def listing(capsys, workspace) -> list[dict]:
    assert lethe(workspace, "request", "list", "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("what,args,environ,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(capsys, tmp_path, what, args, environ, message):
    workspace = tmp_path / "ws"
    assert lethe(workspace, "request", "add", "bag", "--note", "ticket 1") == 0
    capsys.readouterr()
    before = listing(capsys, workspace)
    try:
        status = lethe(workspace, *args, environ=environ)
    except SystemExit as exit:  # argparse's own refusals
        status = exit.code
    err = capsys.readouterr().err
    if message is None:  # cases whose outcome is worth recording but whose message is checked below
        return check_special(what, status, err, capsys, workspace, before)
    assert status == 2, (what, status, err)
    assert message in err, (what, err)
    assert "Traceback" not in err
    assert listing(capsys, workspace) == before


def check_special(what, status, err, capsys, workspace, before):
    if what == "queued concept as anchor":  # allowed: the anchor is still produced until its own request runs
        assert status == 0
        assert [r["concept"] for r in listing(capsys, workspace)] == ["bag", "coat"]
    elif what == "rollback without a registry":
        assert status == 2 and "there is no production version yet" in err and "Traceback" not in err, err
        assert listing(capsys, workspace) == before
