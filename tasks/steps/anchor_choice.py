"""The automatic anchor: what a forgotten concept is drawn as instead, when a request names no anchor.

A forgotten concept is steered onto its anchor, so its forget accuracy can go no lower than the rate at which
the judge calls the *anchor's* samples the concept (the anchor's confusion). The rule `least-confused` (the
default) therefore picks the retained candidate whose teacher samples the judge least often calls the
concept, within the concept's domain where one is known, and breaks ties by nearness (the judge's mean
probability of the candidate on the concept's own samples), so the anchor is as close as it can be without
being confused with the concept. The rule `nearest` is the earlier choice (highest probability only): it
picks the concept's nearest look-alike, whose confusion is often the highest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ANCHOR_RULES = ("least-confused", "nearest")


@dataclass(frozen=True)
class AnchorChoice:
    anchor: str
    rule: str
    confusion: dict[str, float]  # per candidate: share of its teacher samples judged as the concept
    nearness: dict[str, float]  # per candidate: the judge's mean probability of it on the concept's samples


@torch.no_grad()
def nearness(judge, images: torch.Tensor, candidates: list[str]) -> dict[str, float]:
    """The judge's mean probability of each candidate on `images` (the concept's teacher samples)."""
    probs = torch.cat([judge(images[i : i + 512]).softmax(1) for i in range(0, len(images), 512)]).mean(0)
    return {c: float(probs[judge.concepts.index(c)]) for c in candidates}


def nearest_retained(judge, images: torch.Tensor, candidates: list[str]) -> str:
    """The candidate with the highest mean judge probability on `images`."""
    scores = nearness(judge, images, candidates)
    return max(scores, key=scores.get)


def confusion(judge, concept: str, images: torch.Tensor, labels: list[str]) -> dict[str, float]:
    """Per concept named in `labels` (one name per image), the share of its images judged as `concept`."""
    predicted = judge.classify(images)
    target = judge.concepts.index(concept)
    out = {}
    for name in dict.fromkeys(labels):
        mine = torch.tensor([label == name for label in labels])
        out[name] = float((predicted[mine] == target).float().mean())
    return out


def choose_anchor(
    judge,
    concept: str,
    concept_images: torch.Tensor,
    candidate_images: torch.Tensor,
    candidate_labels: list[str],
    candidates: list[str],
    rule: str,
    domains: dict[str, str] | None = None,
) -> AnchorChoice:
    """The anchor for `concept` among `candidates` by `rule`; `candidate_images` (labelled by name) are the
    teacher's samples of at least the candidates. With `domains`, candidates of the concept's own domain are
    preferred when there are any."""
    if rule not in ANCHOR_RULES:
        raise ValueError(f"unknown anchor rule {rule!r}; known: {', '.join(ANCHOR_RULES)}")
    if not candidates:
        raise ValueError("no retained concept is left to serve as an anchor")
    near = nearness(judge, concept_images, candidates)
    keep = [i for i, label in enumerate(candidate_labels) if label in candidates]
    confused = confusion(judge, concept, candidate_images[keep], [candidate_labels[i] for i in keep])
    missing = [c for c in candidates if c not in confused]
    if missing:
        raise ValueError(f"no teacher samples of the anchor candidates {missing}")
    pool = candidates
    if domains and concept in domains:
        same = [c for c in candidates if domains.get(c) == domains[concept]]
        pool = same or candidates
    if rule == "nearest":
        anchor = max(pool, key=lambda c: near[c])
    else:
        anchor = min(pool, key=lambda c: (confused[c], -near[c]))
    return AnchorChoice(anchor, rule, {c: confused[c] for c in candidates}, near)
