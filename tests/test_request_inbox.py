"""The S3 request inbox on a real S3 endpoint (moto's server over HTTP on loopback) and both queue engines:
each object enters the queue once, in key order; bad objects are moved aside with their reason and never stop
the others; an object read before a crash is moved on the next pass without being queued twice."""

from __future__ import annotations

import json

import pytest

from lethe.tasks.stores.queue import RequestQueue
from lethe.tasks.stores.request_inbox import ingest_inbox, parse_request
from lethe.tasks.stores.s3 import split_s3_url
from tests.conftest import S3_BUCKET as BUCKET
from tests.conftest import tiny_generator


@pytest.fixture
def s3(s3_bucket):
    return s3_bucket


def put(client, key: str, body) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    client.put_object(Bucket=BUCKET, Key=key, Body=data)


def keys(client, prefix: str = "") -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_objects_enter_the_queue_once_in_key_order_and_bad_ones_are_moved_aside(s3, queue_location):
    queue, generator = RequestQueue(queue_location), tiny_generator()
    put(s3, "in/002-bag.json", {"concept": "bag", "note": "ticket 2"})
    put(s3, "in/001-trouser.json", {"concept": "trouser", "anchor": "dress", "note": "ticket 1"})
    put(s3, "in/003-broken.json", b"{not json")
    put(s3, "in/004-unknown.json", {"concept": "unicorn"})
    put(s3, "in/005-extra.json", {"concept": "coat", "priority": "high"})
    put(s3, "elsewhere/006.json", {"concept": "shirt"})  # outside the inbox's prefix

    report = ingest_inbox(queue, generator, s3, f"s3://{BUCKET}/in", 30)

    assert [(r.concept, r.anchor, r.note) for r in queue.list()] == [
        ("trouser", "dress", "ticket 1"),
        ("bag", None, "ticket 2"),
    ]
    assert [key for key, _ in report.queued] == ["in/001-trouser.json", "in/002-bag.json"]
    reasons = dict(report.rejected)
    assert set(reasons) == {"in/003-broken.json", "in/004-unknown.json", "in/005-extra.json"}
    assert "not JSON" in reasons["in/003-broken.json"]
    assert "unicorn" in reasons["in/004-unknown.json"]
    assert "priority" in reasons["in/005-extra.json"]
    assert keys(s3, "in/") == [
        "in/processed/001-trouser.json",
        "in/processed/002-bag.json",
        "in/rejected/003-broken.json",
        "in/rejected/004-unknown.json",
        "in/rejected/005-extra.json",
    ]
    moved = s3.head_object(Bucket=BUCKET, Key="in/processed/001-trouser.json")["Metadata"]
    assert moved == {"lethe-outcome": "queued", "lethe-request": str(queue.list()[0].id)}
    refused = s3.head_object(Bucket=BUCKET, Key="in/rejected/004-unknown.json")["Metadata"]
    assert refused["lethe-outcome"] == "rejected" and "unicorn" in refused["lethe-reason"]
    assert keys(s3, "elsewhere/") == ["elsewhere/006.json"]

    again = ingest_inbox(queue, generator, s3, f"s3://{BUCKET}/in", 30)  # nothing new: nothing queued twice
    assert (again.queued, again.rejected, again.already) == ([], [], [])
    assert len(queue.list()) == 2


def test_an_object_read_before_a_crash_is_moved_not_queued_again(s3, queue_location):
    queue, generator = RequestQueue(queue_location), tiny_generator()
    put(s3, "in/001.json", {"concept": "trouser"})
    etag = s3.head_object(Bucket=BUCKET, Key="in/001.json")["ETag"].strip('"')
    # the crash: the request was queued (with its origin, in one transaction), the object never moved
    first = queue.add("trouser", known=generator.concepts, origin=(BUCKET, "in/001.json", etag))

    report = ingest_inbox(queue, generator, s3, f"s3://{BUCKET}/in", 30)

    assert report.already == ["in/001.json"] and report.queued == []
    assert [r.id for r in queue.list()] == [first.id]
    assert keys(s3, "in/") == ["in/processed/001.json"]
    # the same bytes again at the same key are the same object (same ETag): moved, not queued
    put(s3, "in/001.json", {"concept": "trouser"})
    report = ingest_inbox(queue, generator, s3, f"s3://{BUCKET}/in", 30)
    assert report.already == ["in/001.json"] and len(queue.list()) == 1
    # another body at that key (a new ETag) is a new request object, read on its own merits
    put(s3, "in/001.json", {"concept": "trouser", "note": "sent twice"})
    report = ingest_inbox(queue, generator, s3, f"s3://{BUCKET}/in", 30)
    assert report.queued == [] and "trouser" in report.rejected[0][1]  # already queued: refused with the reason
    assert len(queue.list()) == 1


def test_a_request_body_is_checked_field_by_field():
    assert parse_request(b'{"concept": "trouser", "prompts": ["jeans"]}') == {
        "concept": "trouser",
        "prompts": ["jeans"],
    }
    for body, reason in [
        (b"[1, 2]", "JSON object"),
        (b'{"anchor": "dress"}', "no concept"),
        (b'{"concept": 3}', "wrong type"),
        (b'{"concept": "trouser", "note": "' + b"x" * 3000 + b'"}', "3000 characters; at most 2000"),
        (b"\xff\xfe", "not JSON"),
        (b" " * (64 * 1024 + 1), "larger than"),
    ]:
        with pytest.raises(Exception, match=reason):
            parse_request(body)
    assert split_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(ValueError, match="s3://"):
        split_s3_url("https://bucket/a")


def test_the_cli_reads_the_inbox_named_in_the_settings(s3, s3_endpoint, tiny_pipeline, capsys):
    assert tiny_pipeline("request", "inbox") == 2  # no inbox configured: a clear refusal
    assert "no inbox is configured" in capsys.readouterr().err
    tiny_pipeline.change(storage__inbox=f"s3://{BUCKET}/requests/", storage__s3_endpoint=s3_endpoint)
    put(s3, "requests/a.json", {"concept": "sandal", "anchor": "sneaker"})
    put(s3, "requests/b.json", {"concept": "sandal"})  # the same concept again: refused, not queued twice
    assert tiny_pipeline("request", "inbox") == 0
    out = capsys.readouterr().out
    assert "queued   requests/a.json -> request 1" in out and "rejected requests/b.json" in out
    assert "1 queued, 1 rejected" in out
    assert tiny_pipeline("request", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["concept"], r["anchor"], r["state"]) for r in listed] == [("sandal", "sneaker", "pending")]


def test_a_second_reader_between_check_and_enqueue_cannot_misfile_the_object(s3, queue_location):
    generator = tiny_generator()

    class RacingQueue(RequestQueue):
        """Another reader (a second machine) queues the object right after this reader found it unread."""

        raced = False

        def inbox_outcome(self, origin):
            seen = super().inbox_outcome(origin)
            if seen is None and not self.raced:
                self.raced = True
                RequestQueue(queue_location).add("trouser", known=generator.concepts, origin=origin)
            return seen

    queue = RacingQueue(queue_location)
    put(s3, "in/001.json", {"concept": "trouser"})
    report = ingest_inbox(queue, generator, s3, f"s3://{BUCKET}/in", 30)
    assert queue.raced and report.queued == [] and report.rejected == [] and report.already == ["in/001.json"]
    assert [r.concept for r in queue.list()] == ["trouser"]  # queued once, by the other reader
    assert keys(s3, "in/") == ["in/processed/001.json"]  # filed as the queue recorded it, not as rejected
