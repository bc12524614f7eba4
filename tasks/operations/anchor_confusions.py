"""Anchor confusions along a version's lineage: what each forgotten concept's forget gate may rise to.

A request step records, as its version's tag `anchor_confusion` ("k/n"), how many of its anchor's n samples
the judge named the forgotten concept on the parent when the request ran (`measure_anchor_confusion`). Every
later version, request or consolidation, is gated with the confusions of every request in its lineage
(`tasks.steps.gates.forget_limit`)."""

from __future__ import annotations

import torch

from lethe.tasks.operations.rollback import ancestors
from lethe.tasks.stores.registry import Registry

TAG = "anchor_confusion"


def measure_anchor_confusion(
    judge, images: torch.Tensor, labels: torch.Tensor, concepts: list[str], concept: str, anchor: str | None
) -> tuple[int, int] | None:
    """(k, n): k of the anchor's n samples (labels index `concepts`) judged as `concept`; None where the anchor
    is not one of the concepts (an anchor given as prompts) or has no samples."""
    if anchor not in concepts or concept not in judge.concepts:
        return None
    mine = images[labels == concepts.index(anchor)]
    if not len(mine):
        return None
    return int((judge.classify(mine) == judge.concepts.index(concept)).sum()), len(mine)


def confusion_tag(confusion: tuple[int, int] | None) -> dict[str, str]:
    return {TAG: f"{confusion[0]}/{confusion[1]}"} if confusion else {}


def lineage_confusions(registry: Registry, version: str) -> dict[str, tuple[int, int]]:
    """Per concept forgotten in `version`'s lineage, its anchor's confusion as its request step recorded it
    (steps registered before the tag existed record none)."""
    out = {}
    for registered in ancestors(registry, version):
        tags = registered.tags
        if tags.get("kind") == "unlearning-step" and TAG in tags:
            k, n = tags[TAG].split("/")
            out.setdefault(tags["concept"], (int(k), int(n)))
    return out
