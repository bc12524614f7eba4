"""The escalation ladder's plans and the queue's record of a ladder: decided from the request alone, so a resumed
attempt gets the same plan; each attempt logged once; people's decisions checked and kept."""

from __future__ import annotations

import pytest

from lethe.tasks.settings import EscalationSettings
from lethe.tasks.steps.escalation import max_attempts, plan_attempt
from lethe.tasks.stores.queue import CANCELLED, DONE, FAILED, PENDING, InvalidTransition, RequestQueue, RequestRefused

LADDER = EscalationSettings(
    attempts=4,
    budget_minutes=60,
    ladder=["anchor", "steps", "intensity"],
    steps_factor=2.0,
    intensity=2.5,
    adversarial_rounds=3,
)


def test_each_attempt_adds_the_next_rung_in_order():
    plans = [
        plan_attempt(a, 1, None, {}, ["dress", "bag"][: a - 1], 200, 2.0, LADDER, rounds=0, hardenable=True)
        for a in (1, 2, 3, 4)
    ]
    assert [p.changes for p in plans] == [(), ("anchor",), ("anchor", "steps"), ("anchor", "steps", "intensity")]
    assert [p.avoid for p in plans] == [(), ("dress",), ("dress", "bag"), ("dress", "bag")]
    assert [p.steps for p in plans] == [200, 200, 400, 400] and [p.intensity for p in plans] == [2.0, 2.0, 2.0, 2.5]
    assert plans[0].why == "as asked" and "next automatic anchor" in plans[1].why
    assert plans[2].tags()["attempt_changes"] == "anchor,steps"
    with pytest.raises(ValueError, match="beyond"):
        plan_attempt(5, 1, None, {}, [], 200, 2.0, LADDER, rounds=0, hardenable=True)


def test_a_fixed_anchor_skips_the_anchor_rung_and_a_retry_starts_a_new_ladder():
    assert max_attempts(True, LADDER, True) == 3 and max_attempts(False, LADDER, True) == 4
    plan = plan_attempt(2, 1, "dress", {}, ["dress"], 200, 2.0, LADDER, rounds=0, hardenable=True)
    assert plan.changes == ("steps",) and plan.anchor == "dress" and plan.avoid == ()
    retry = plan_attempt(5, 5, None, {"anchor": "coat", "steps": 300}, [], 200, 2.0, LADDER, rounds=0, hardenable=True)
    assert (retry.rung, retry.anchor, retry.steps, retry.changes) == (0, "coat", 300, ())
    assert "retry" in retry.why
    assert max_attempts(False, LADDER.model_copy(update={"attempts": 1}), True) == 1


def test_the_recovery_rung_turns_on_adversarial_training_where_the_model_has_it():
    ladder = LADDER.model_copy(update={"ladder": ["anchor", "recovery", "steps"], "adversarial_rounds": 3})
    plans = [
        plan_attempt(a, 1, None, {}, ["dress", "bag"][: a - 1], 200, 2.0, ladder, rounds=0, hardenable=True)
        for a in (1, 2, 3, 4)
    ]
    assert [p.adversarial_rounds for p in plans] == [0, 0, 3, 3] and [p.steps for p in plans] == [200, 200, 200, 400]
    assert "adversarial training" in plans[2].why and plans[2].tags()["attempt_adversarial_rounds"] == "3"
    # a text-to-image model has no adversarial rows: its ladder skips the rung rather than waste an attempt
    text = plan_attempt(3, 1, None, {}, ["dress", "bag"], 200, 2.0, ladder, rounds=0, hardenable=False)
    assert (text.changes, text.adversarial_rounds, text.steps) == (("anchor", "steps"), 0, 400)
    assert max_attempts(False, ladder, hardenable=False) == 3 and max_attempts(True, ladder, hardenable=False) == 2
    # rounds the settings already turn on pass through, and the rung never lowers them
    assert plan_attempt(1, 1, None, {}, [], 200, 2.0, ladder, rounds=1, hardenable=True).adversarial_rounds == 1
    assert plan_attempt(3, 1, None, {}, ["a", "b"], 200, 2.0, ladder, rounds=1, hardenable=True).adversarial_rounds == 3
    assert plan_attempt(3, 1, None, {}, ["a", "b"], 200, 2.0, ladder, rounds=5, hardenable=True).adversarial_rounds == 5


def test_the_queue_logs_each_attempt_once_and_keeps_decisions(tmp_path):
    queue = RequestQueue(tmp_path / "queue.sqlite")
    queue.add("trouser", due_at="2099-01-31")
    assert queue.get(1).due_at == "2099-01-31T00:00:00+00:00"
    request = queue.claim_next()
    record = {"attempt": 1, "anchor": "dress", "passed": False, "reasons": ["forget"], "seconds": 3.0}
    request = queue.escalate(request.id, record)
    assert (request.state, request.attempts, request.rung) == ("running", 2, 1)
    assert queue.recover() == [1]  # a kill during attempt 2: it resumes as attempt 2, attempt 1 logged once
    request = queue.claim_next()
    assert request.attempts == 2 and [r["attempt"] for r in request.attempt_log] == [1]
    request = queue.fail(request.id, "both failed", version="3", record={**record, "attempt": 2})
    assert request.state == FAILED and [r["attempt"] for r in request.attempt_log] == [1, 2]
    assert request.anchor is None  # the automatic anchor stays automatic for a retry

    with pytest.raises(RequestRefused, match="reason"):
        queue.cancel(1, "  ", "ana")
    with pytest.raises(RequestRefused, match="can set anchor, steps, not color"):
        queue.retry(1, {"anchor": "coat", "color": "red"}, "why", "ana")
    request = queue.retry(1, {"anchor": "coat"}, "try coat", "ana")
    assert (request.state, request.ladder_start, request.overrides) == (PENDING, 3, {"anchor": "coat"})
    assert queue.claim_next().rung == 0
    with pytest.raises(InvalidTransition):
        queue.cancel(1, "running", "ana")
    queue.fail(1, "again")
    assert queue.approve(1, "3", "signed off", "ben", {"gate_numbers": {}}).state == DONE
    with pytest.raises(InvalidTransition, match="only a failed request"):
        queue.approve(1, "3", "twice", "ben", {})
    queue.add("bag")
    assert queue.cancel(2, "withdrawn", "cy").state == CANCELLED
    assert [(d.action, d.by_user, d.version) for d in queue.decisions()] == [
        ("retry", "ana", None),
        ("approve", "ben", "3"),
        ("cancel", "cy", None),
    ]
    with pytest.raises(RequestRefused, match="already past"):
        queue.add("coat", due_at="2000-01-01")
    with pytest.raises(RequestRefused, match="ISO"):
        queue.add("coat", due_at="next tuesday")
