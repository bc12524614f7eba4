"""The S3 request inbox: JSON objects put under `storage.inbox` become queue entries, each exactly once.

An object is keyed on (bucket, key, ETag); the queue records what became of it in the same transaction that
queues its request, so a crash between reading and moving an object can neither lose nor repeat it. Read
objects move to `<prefix>/processed/` (with the request id) or `<prefix>/rejected/` (with the reason in the
object's metadata and the queue's record). A malformed object is refused, never raised: it cannot stop a
batch. An object body is one request:

    {"concept": "trouser", "anchor": "dress", "note": "ticket 123",
     "prompts": ["jeans"], "anchor_prompts": ["a plain dress"]}     # anchor, note and prompts optional
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lethe.tasks.operations.enqueue import enqueue
from lethe.tasks.stores.queue import RequestQueue, RequestRefused, check_note
from lethe.tasks.stores.s3 import split_s3_url

MAX_OBJECT_BYTES = 64 * 1024
FIELDS = {
    "concept": str,
    "anchor": (str, type(None)),
    "note": str,
    "prompts": list,
    "anchor_prompts": list,
    "due": str,  # ISO date or time; default: deadlines.days after it is queued
}


@dataclass
class InboxReport:
    queued: list[tuple[str, int]] = field(default_factory=list)  # (key, request id)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    already: list[str] = field(default_factory=list)  # read before (a crash before the move): moved now


def parse_request(body: bytes) -> dict:
    """The request fields of an object body; RequestRefused with the reason when it is not one request."""
    if len(body) > MAX_OBJECT_BYTES:
        raise RequestRefused(f"object larger than {MAX_OBJECT_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestRefused(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestRefused("a request object must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestRefused(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    if "concept" not in data:
        raise RequestRefused("the request names no concept")
    for name, kind in FIELDS.items():
        if name in data and not isinstance(data[name], kind):
            raise RequestRefused(f"field {name!r} has the wrong type ({type(data[name]).__name__})")
    check_note(data.get("note", ""))
    return data


def ingest_inbox(queue: RequestQueue, generator, client, inbox: str, deadline_days: int) -> InboxReport:
    """Queue every new request object under `inbox` (s3://BUCKET/PREFIX), in key order; an object without a
    `due` date is due `deadline_days` after it is queued."""
    bucket, prefix = split_s3_url(inbox)
    base = f"{prefix}/" if prefix else ""
    report = InboxReport()
    for key, etag in _new_objects(client, bucket, base):
        origin = (bucket, key, etag)
        seen = queue.inbox_outcome(origin)
        if seen is not None:  # read before a crash: finish the move only
            report.already.append(key)
            _move(client, bucket, key, base, seen["outcome"], seen.get("reason") or "", seen.get("request_id"))
            continue
        try:
            body = client.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"].read(MAX_OBJECT_BYTES + 1)
            fields = parse_request(body)
            request = enqueue(
                queue,
                generator,
                fields["concept"],
                fields.get("anchor"),
                fields.get("note", ""),
                fields.get("prompts", ()),
                fields.get("anchor_prompts", ()),
                origin=origin,
                due_at=fields.get("due"),
                deadline_days=deadline_days,
            )
        except RequestRefused as refused:
            queue.refuse_inbox_object(origin, str(refused))  # no-op when another reader recorded it first
            seen = queue.inbox_outcome(origin)  # the queue's record decides where the object goes
            if seen["outcome"] == "queued":
                report.already.append(key)
            else:
                report.rejected.append((key, seen["reason"]))
            _move(client, bucket, key, base, seen["outcome"], seen["reason"] or "", seen["request_id"])
            continue
        report.queued.append((key, request.id))
        _move(client, bucket, key, base, "queued", "", request.id)
    return report


def _new_objects(client, bucket: str, base: str):
    """(key, ETag) of the objects under `base` outside processed/ and rejected/, in key order."""
    paginator = client.get_paginator("list_objects_v2")
    found = []
    for page in paginator.paginate(Bucket=bucket, Prefix=base):
        for item in page.get("Contents", []):
            relative = item["Key"][len(base) :]
            if relative.startswith(("processed/", "rejected/")) or relative.endswith("/") or not relative:
                continue
            found.append((item["Key"], item["ETag"].strip('"')))
    return sorted(found)


def _move(client, bucket: str, key: str, base: str, outcome: str, reason: str, request_id) -> None:
    """Copy the object under processed/ or rejected/ with what became of it, then delete the original."""
    folder = "processed/" if outcome == "queued" else "rejected/"
    metadata = {"lethe-outcome": outcome}
    if request_id is not None:
        metadata["lethe-request"] = str(request_id)
    if reason:
        metadata["lethe-reason"] = reason.encode("ascii", "replace").decode()[:1024]
    from botocore.exceptions import ClientError

    try:
        client.copy_object(
            Bucket=bucket,
            Key=base + folder + key[len(base) :],
            CopySource={"Bucket": bucket, "Key": key},
            Metadata=metadata,
            MetadataDirective="REPLACE",
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return  # another reader moved it first
        raise
    client.delete_object(Bucket=bucket, Key=key)
