"""Property-based tests (hypothesis): the queue's state machine against a model of it, under any sequence of
operations, and request parsing under any bytes. A refused operation raises the queue's own error and
changes nothing; an accepted request is one that the checks allow."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lethe.tasks.stores.queue import (
    DONE,
    FAILED,
    MAX_NOTE_CHARS,
    PENDING,
    ROLLED_BACK,
    RUNNING,
    InvalidTransition,
    RequestQueue,
    RequestRefused,
)
from lethe.tasks.stores.request_inbox import parse_request

CONCEPTS = ["coat", "bag", "shirt", "sandal"]
concepts = st.sampled_from(CONCEPTS)


class QueueMachine(RuleBasedStateMachine):
    """The model: id -> (concept, state, attempts). Every rule applies an operation to the real queue (SQLite)
    and to the model, and asserts that the queue refused exactly what the model says it must."""

    def __init__(self):
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.queue = RequestQueue(Path(self.folder.name) / "queue.sqlite")
        self.model: dict[int, list] = {}

    def teardown(self):
        self.folder.cleanup()

    def ids(self, *states: str) -> list[int]:
        return [i for i, (_, state, _) in self.model.items() if state in states]

    def expect_refusal(self, error, operation, *args) -> None:
        before = [r.to_dict() for r in self.queue.list()]
        try:
            operation(*args)
        except error:
            assert [r.to_dict() for r in self.queue.list()] == before  # a refusal changes nothing
            return
        raise AssertionError(f"{operation.__name__}{args} was not refused")

    @rule(concept=concepts)
    def add(self, concept):
        taken = [i for i in self.ids(PENDING, RUNNING, DONE) if self.model[i][0] == concept]
        if taken:
            self.expect_refusal(RequestRefused, self.queue.add, concept)
        else:
            request = self.queue.add(concept)
            assert request.id not in self.model and all(request.id > i for i in self.model)
            self.model[request.id] = [concept, PENDING, 0]

    @rule()
    def claim(self):
        if self.ids(RUNNING):
            self.expect_refusal(InvalidTransition, self.queue.claim_next)
            return
        request = self.queue.claim_next()
        pending = self.ids(PENDING)
        if not pending:
            assert request is None
            return
        assert request.id == min(pending)  # strictly in id order
        self.model[request.id][1] = RUNNING
        self.model[request.id][2] += 1
        assert request.attempts == self.model[request.id][2]

    @rule(data=st.data(), done=st.booleans())
    def finish(self, data, done):
        finish = self.queue.complete if done else self.queue.fail
        request_id = data.draw(st.sampled_from(sorted(self.model))) if self.model else 1
        if request_id not in self.model:
            self.expect_refusal(KeyError, finish, request_id, "x")
        elif self.model[request_id][1] != RUNNING:
            self.expect_refusal(InvalidTransition, finish, request_id, "x")
        else:
            finish(request_id, "x")
            self.model[request_id][1] = DONE if done else FAILED

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def roll_back_or_restore(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.model)))
        concept, state, _ = self.model[request_id]
        if state == DONE:
            self.queue.mark_rolled_back(request_id, "rolled back")
            self.model[request_id][1] = ROLLED_BACK
        elif state == ROLLED_BACK and not [i for i in self.ids(DONE) if self.model[i][0] == concept]:
            self.queue.mark_restored(request_id)
            self.model[request_id][1] = DONE
        elif state != ROLLED_BACK:
            self.expect_refusal(InvalidTransition, self.queue.mark_rolled_back, request_id, "x")

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def requeue(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.model)))
        concept, state, _ = self.model[request_id]
        clash = [i for i in self.ids(PENDING, RUNNING, DONE) if self.model[i][0] == concept]
        if state in (FAILED, ROLLED_BACK) and not clash:
            self.queue.requeue(request_id)
            self.model[request_id][1] = PENDING
        else:
            self.expect_refusal((InvalidTransition, RequestRefused), self.queue.requeue, request_id)

    @rule()
    def crash_and_recover(self):
        """The process dies; a new one opens the queue and recovers: the running request is pending again,
        on the same attempt (so the resumed attempt finds what the interrupted one registered)."""
        self.queue = RequestQueue(self.queue.path)
        running = self.ids(RUNNING)
        assert self.queue.recover() == running
        for i in running:
            self.model[i][1] = PENDING
            self.model[i][2] -= 1

    @invariant()
    def the_queue_is_the_model(self):
        rows = {r.id: [r.concept, r.state, r.attempts] for r in self.queue.list()}
        assert rows == self.model
        assert len(self.ids(RUNNING)) <= 1
        open_concepts = [self.model[i][0] for i in self.ids(PENDING, RUNNING, DONE)]
        assert len(open_concepts) == len(set(open_concepts))  # no concept queued or forgotten twice


TestQueueStateMachine = QueueMachine.TestCase
TestQueueStateMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_subnormal=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
request_like = st.fixed_dictionaries(
    {"concept": st.text(max_size=20)},
    optional={
        "anchor": st.none() | st.text(max_size=20),
        "note": st.text(max_size=MAX_NOTE_CHARS + 50),
        "prompts": st.lists(st.text(max_size=30), max_size=3),
        "surplus": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_are_parsed_or_refused_with_a_reason(body):
    try:
        fields = parse_request(body)
    except RequestRefused as refused:
        assert str(refused)
        return
    assert isinstance(fields["concept"], str)


@settings(max_examples=300, deadline=None)
@given(request=request_like)
def test_a_request_object_is_accepted_only_when_every_field_is_valid(request):
    body = json.dumps(request).encode()
    note = request.get("note", "")
    valid = "surplus" not in request and len(note) <= MAX_NOTE_CHARS
    valid = valid and not any(ord(ch) < 32 and ch not in "\n\t" for ch in note)
    try:
        fields = parse_request(body)
    except RequestRefused:
        assert not valid
        return
    assert valid and fields == request
