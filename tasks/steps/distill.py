"""Distill: the teacher (the production model) renders the forget set and the retain set of a request.

The retain set covers every concept except the one being forgotten, including concepts forgotten earlier:
the teacher renders those as their anchors, so distilling onto them keeps them forgotten. When no anchor is
given, `distill.anchor_rule` picks it from the teacher's own replay (tasks/steps/anchor_choice.py): by default
the retained candidate least often judged as the concept, the nearest of those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.concepts import DOMAINS
from lethe.models.distill_targets import ReplayRows
from lethe.models.generator import Generator
from lethe.models.judge import Judge
from lethe.models.sampler import sample
from lethe.tasks.settings import DistillSettings, SamplingSettings
from lethe.tasks.steps.anchor_choice import choose_anchor


@dataclass
class ReplaySets:
    forget_images: torch.Tensor
    retain_images: torch.Tensor
    retain_labels: torch.Tensor
    anchor: str
    concept: str

    def rows(self, generator: Generator) -> ReplayRows:
        """The replay as the pool reads it: forget images asked as the concept, taught as the anchor."""
        concept_label, anchor_label = generator.labels([self.concept, self.anchor])
        return ReplayRows.from_labels(
            self.forget_images, self.retain_images, self.retain_labels, concept_label, anchor_label
        )

    def forget_tensors(self) -> dict[str, torch.Tensor]:
        return {"images": self.forget_images}

    def retain_tensors(self) -> dict[str, torch.Tensor]:
        return {"images": self.retain_images, "labels": self.retain_labels}


def distill(
    generator: Generator,
    teacher: AdapterStack,
    judge: Judge,
    concept: str,
    anchor: str | None,
    forgotten: list[str],
    replay: DistillSettings,
    sampling: SamplingSettings,
    progress=None,
    prompts: tuple[str, ...] = (),
    anchor_prompts: tuple[str, ...] = (),
    avoid: tuple[str, ...] = (),
) -> ReplaySets:
    """Generate the replay sets: `replay.replay_per_concept` teacher samples per concept; an automatic anchor
    is never one in `avoid`. A class-conditional model has no prompts: a request that gives some is refused."""
    if prompts or anchor_prompts:
        raise ValueError("this generator is class-conditional: a request cannot give prompts")
    n, seed = replay.replay_per_concept, replay.seed
    steps, batch = sampling.steps, sampling.batch_size
    forget_images, _ = sample(generator, [concept], n, seed, steps, teacher, sampling.guidance, batch)
    candidates = [c for c in generator.concepts if c != concept and c not in forgotten and c not in avoid]
    if anchor is None and not candidates:
        raise ValueError(
            "no retained concept is left to serve as an anchor"
            + (f" (earlier attempts tried {', '.join(avoid)})" if avoid else "")
        )
    retained = [c for c in generator.concepts if c != concept]
    retain_images, retain_labels = sample(
        generator, retained, n, seed, steps, teacher, sampling.guidance, batch, progress=progress
    )
    if anchor is None:
        names = [generator.concepts[i] for i in retain_labels.tolist()]
        domains = DOMAINS if replay.anchor_domain == "same" else None
        anchor = choose_anchor(
            judge, concept, forget_images, retain_images, names, candidates, replay.anchor_rule, domains
        ).anchor
    return ReplaySets(forget_images, retain_images, retain_labels, anchor, concept)
