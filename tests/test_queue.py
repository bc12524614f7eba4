import sqlite3

import pytest

from lethe.models.concepts import CONCEPTS
from lethe.tasks.stores.queue import InvalidTransition, RequestQueue, RequestRefused


@pytest.fixture
def queue(queue_location):
    """The queue suite runs on SQLite and on a real PostgreSQL server (conftest's `queue_location`)."""
    return RequestQueue(queue_location)


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


def test_a_crash_loses_nothing_and_recover_requeues(queue_location):
    queue = RequestQueue(queue_location)
    add(queue, "coat")
    add(queue, "shirt")
    queue.claim_next()
    del queue  # the process "dies" with request 1 running
    reopened = RequestQueue(queue_location)
    assert [r.state for r in reopened.list()] == ["running", "pending"]
    assert reopened.recover() == [1]
    again = reopened.claim_next()
    assert again.id == 1 and again.attempts == 1  # the interrupted attempt is resumed, not counted twice


def test_the_embedded_queue_is_a_plain_sqlite_file(tmp_path):
    queue = RequestQueue(tmp_path / "queue.sqlite")
    add(queue, "dress")
    rows = sqlite3.connect(queue.path).execute("SELECT concept, state FROM requests").fetchall()
    assert rows == [("dress", "pending")]


def test_a_request_keeps_its_own_prompts(queue, queue_location):
    request = queue.add(
        "trouser", "dress", known=CONCEPTS, prompts=["jeans", "denim pants"], anchor_prompts=["a plain dress"]
    )
    again = RequestQueue(queue_location).get(request.id)
    assert again.prompts == ("jeans", "denim pants") and again.anchor_prompts == ("a plain dress",)
    assert again.to_dict()["prompts"] == ["jeans", "denim pants"]
    assert add(queue, "bag").prompts == ()


@pytest.mark.parametrize(
    "prompts,anchor_prompts,message",
    [
        ([""], [], "non-empty"),
        (["   "], [], "non-empty"),
        (["two\nlines"], [], "one line"),
        (["x" * 201], [], "one line"),
        ([f"p{i}" for i in range(17)], [], "at most 16"),
        (["jeans", "jeans"], [], "repeat"),
        (["jeans"], ["jeans"], "both"),
        ([], ["\x00"], "anchor prompts"),
    ],
)
def test_bad_request_prompts_are_refused_and_nothing_is_queued(queue, prompts, anchor_prompts, message):
    with pytest.raises(RequestRefused, match=message):
        queue.add("trouser", known=CONCEPTS, prompts=prompts, anchor_prompts=anchor_prompts)
    assert queue.list() == []


def test_a_queue_file_from_before_request_prompts_gains_the_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, concept TEXT NOT NULL, anchor TEXT, "
        "note TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'pending', created_at TEXT NOT NULL, "
        "started_at TEXT, finished_at TEXT, attempts INTEGER NOT NULL DEFAULT 0, version TEXT, "
        "reasons TEXT NOT NULL DEFAULT '');"
        "INSERT INTO requests (concept, anchor, created_at) VALUES ('bag', 'dress', '2026-01-01T00:00:00+00:00');"
    )
    db.commit()
    db.close()
    queue = RequestQueue(path)
    old = queue.get(1)
    assert (old.concept, old.anchor, old.prompts, old.anchor_prompts) == ("bag", "dress", (), ())
    assert queue.add("trouser", prompts=["jeans"]).prompts == ("jeans",)


def test_concurrent_claims_from_many_processes_take_one_request_once(queue_location):
    """Eight processes claim at the same moment: exactly one gets the oldest request, the rest see it
    running; the claims are serialised by the engine (SQLite's write lock, PostgreSQL's advisory lock)."""
    import multiprocessing

    queue = RequestQueue(queue_location)
    for concept in ("bag", "coat", "shirt"):
        add(queue, concept)
    context = multiprocessing.get_context("spawn")
    with context.Pool(8) as pool:
        outcomes = pool.map(claim_once, [queue_location] * 8)
    assert sorted(outcomes, key=str) == [1] + ["running"] * 7
    assert [(r.id, r.state, r.attempts) for r in queue.list()] == [
        (1, "running", 1),
        (2, "pending", 0),
        (3, "pending", 0),
    ]


def claim_once(location: str):
    try:
        claimed = RequestQueue(location).claim_next()
    except InvalidTransition:
        return "running"
    return claimed.id if claimed else None


def test_the_schema_is_versioned_and_opening_again_applies_nothing(queue_location):
    from lethe.tasks.stores.queue_database import MIGRATIONS, QueueDatabase

    database = RequestQueue(queue_location).database
    assert database.schema_version() == MIGRATIONS[-1][0]
    assert database.migrate() == [] and QueueDatabase(queue_location).migrate() == []


def test_a_pre_migration_queue_file_is_stamped_with_its_schema(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, concept TEXT NOT NULL, anchor TEXT, "
        "note TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'pending', created_at TEXT NOT NULL, "
        "started_at TEXT, finished_at TEXT, attempts INTEGER NOT NULL DEFAULT 0, version TEXT, "
        "reasons TEXT NOT NULL DEFAULT '', prompts TEXT NOT NULL DEFAULT '[]', "
        "anchor_prompts TEXT NOT NULL DEFAULT '[]')"
    )
    db.execute("INSERT INTO requests (concept, state, created_at) VALUES ('coat', 'done', '2026-01-01')")
    db.commit()
    db.close()
    queue = RequestQueue(path)
    from lethe.tasks.stores.queue_database import MIGRATIONS

    assert queue.database.schema_version() == MIGRATIONS[-1][0] and queue.forgotten() == ["coat"]


@pytest.mark.parametrize(
    "location,message",
    [
        ("postgresql://lethe:secret@db.example:5432/lethe", "holds a password"),
        ("postgresql:///lethe", "names no host"),
        ("mysql://db/lethe", "unknown queue location"),
    ],
)
def test_a_bad_queue_location_is_refused_before_anything_is_opened(location, message):
    from lethe.tasks.stores.queue_database import QueueLocationError

    with pytest.raises(QueueLocationError, match=message) as caught:
        RequestQueue(location)
    assert "secret" not in str(caught.value)


def test_an_outage_releases_the_running_request_to_wait_on_the_same_attempt(queue_location):
    queue = RequestQueue(queue_location)
    add(queue, "coat")
    add(queue, "shirt")
    queue.claim_next()
    with pytest.raises(InvalidTransition, match="request 2 is pending, not running"):
        queue.release(2, "x")
    waiting = queue.release(1, "OSError: [Errno 28] No space left on device")
    assert (waiting.state, waiting.attempts, waiting.reasons) == (
        "pending",
        0,
        "waiting: OSError: [Errno 28] No space left on device",
    )
    again = queue.claim_next()
    assert again.id == 1 and again.attempts == 1  # first in line again, on the attempt it was on
    assert queue.complete(1, "2").reasons == ""
