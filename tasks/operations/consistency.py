"""Queue and registry must tell the same story before a batch builds on them.

A crash cannot make them disagree (a version registered before the queue heard of it is resumed, see
`flows/unlearn.finish_registered`); a restored backup of one but not the other, or settings that point the
queue and the registry at different installations, can. A batch that built on such a pair would register
versions for requests that no longer exist, or forget a concept twice, so it refuses, saying what differs.
"""

from __future__ import annotations

from lethe.tasks.stores.queue import DONE, FAILED, ROLLED_BACK, RequestQueue
from lethe.tasks.stores.registry import Registry


class Disagreement(ValueError):
    """The queue and the registry disagree; the message lists how."""


def disagreements(queue: RequestQueue, registry: Registry) -> list[str]:
    """Every way the queue and the registry contradict each other, as sentences (empty when they agree)."""
    versions = {str(v.version): v for v in registry.versions()}
    requests = {r.id: r for r in queue.list()}
    found = []
    for request in requests.values():
        if request.state in (DONE, FAILED, ROLLED_BACK) and request.version:
            version = versions.get(str(request.version))
            if version is None:
                found.append(
                    f"request {request.id} ({request.concept}) is {request.state} with version {request.version}, "
                    f"which the registry {registry.model_name} does not have"
                )
            elif version.tags.get("request_id") != str(request.id):
                found.append(
                    f"request {request.id} names version {request.version}, which was registered for request "
                    f"{version.tags.get('request_id') or '(none: the base)'}"
                )
    for number, version in versions.items():
        request_id = version.tags.get("request_id")
        if not request_id:
            continue
        request = requests.get(int(request_id))
        if request is None:
            found.append(f"version {number} fulfils request {request_id}, which the queue does not have")
        elif version.tags.get("concept") != request.concept:
            found.append(
                f"version {number} forgets {version.tags.get('concept')!r} for request {request_id}, "
                f"but the queue's request {request_id} is for {request.concept!r}"
            )
    return found


def check_agreement(queue: RequestQueue, registry: Registry) -> None:
    found = disagreements(queue, registry)
    if found:
        raise Disagreement(
            "the queue and the registry disagree, so no batch runs: "
            + "; ".join(found)
            + ". Point storage.queue_url and storage.mlflow_uri at the same installation, or restore both "
            "from the same backup"
        )
