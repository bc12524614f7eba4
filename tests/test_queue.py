import sqlite3

import pytest

from lethe.models.concepts import CONCEPTS
from lethe.tasks.stores.queue import InvalidTransition, RequestQueue, RequestRefused


@pytest.fixture
def queue(tmp_path):
    return RequestQueue(tmp_path / "queue.sqlite")


def add(queue, concept, anchor=None):
    return queue.add(concept, anchor, known=CONCEPTS, forgotten=queue.forgotten())


def test_requests_run_strictly_in_order_through_the_state_machine(queue):
    first, second = add(queue, "trouser", "dress"), add(queue, "digit_3")
    assert [r.state for r in queue.list()] == ["pending", "pending"]
    claimed = queue.claim_next()
    assert claimed.id == first.id and claimed.state == "running" and claimed.attempts == 1
    with pytest.raises(InvalidTransition):
        queue.claim_next()  # one at a time
    queue.complete(first.id, version="2")
    assert queue.claim_next().id == second.id
    failed = queue.fail(second.id, "gate: forget accuracy too high", version="3", anchor="digit_8")
    assert (failed.state, failed.reasons, failed.anchor) == ("failed", "gate: forget accuracy too high", "digit_8")
    assert queue.claim_next() is None
    assert queue.forgotten() == ["trouser"]


def test_finished_requests_cannot_change_state(queue):
    request = add(queue, "bag")
    with pytest.raises(InvalidTransition):
        queue.complete(request.id, "2")  # still pending
    queue.claim_next()
    queue.complete(request.id, "2")
    with pytest.raises(InvalidTransition):
        queue.fail(request.id, "late")


@pytest.mark.parametrize(
    "concept,anchor,message",
    [
        ("hat", None, "unknown concept"),
        ("bag", "bag", "must differ"),
        ("bag", "hat", "unknown anchor"),
    ],
)
def test_invalid_requests_are_refused(queue, concept, anchor, message):
    with pytest.raises(RequestRefused, match=message):
        add(queue, concept, anchor)
    assert queue.list() == []


def test_duplicates_and_forgotten_concepts_are_refused(queue):
    add(queue, "sandal")
    with pytest.raises(RequestRefused, match="already queued"):
        add(queue, "sandal")
    queue.claim_next()
    queue.complete(1, "2")
    with pytest.raises(RequestRefused, match="already forgotten"):
        add(queue, "sandal")
    with pytest.raises(RequestRefused, match="has been forgotten"):
        add(queue, "sneaker", anchor="sandal")


def test_a_crash_loses_nothing_and_recover_requeues(tmp_path):
    path = tmp_path / "queue.sqlite"
    queue = RequestQueue(path)
    add(queue, "coat")
    add(queue, "shirt")
    queue.claim_next()
    del queue  # the process "dies" with request 1 running
    reopened = RequestQueue(path)
    assert [r.state for r in reopened.list()] == ["running", "pending"]
    assert reopened.recover() == [1]
    again = reopened.claim_next()
    assert again.id == 1 and again.attempts == 2


def test_queue_is_a_plain_sqlite_file(queue):
    add(queue, "dress")
    rows = sqlite3.connect(queue.path).execute("SELECT concept, state FROM requests").fetchall()
    assert rows == [("dress", "pending")]
