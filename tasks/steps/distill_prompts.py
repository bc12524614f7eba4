"""Distill for a text-to-image generator: the teacher renders latent replay of the concept's own prompts
(the forget set) and of every other concept's prompts (the retain set); the forget rows are paired with the
anchor's prompts, so the student learns to draw the anchor when asked for the concept. Held-out
paraphrases are never used here: they are kept for evaluation."""

from __future__ import annotations

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.distill_targets import ReplayRows
from lethe.models.text_generator import TextToImageGenerator
from lethe.tasks.concept_sets import ConceptSet
from lethe.tasks.settings import DistillSettings, SamplingSettings


def distill_prompts(
    generator: TextToImageGenerator,
    teacher: AdapterStack,
    concepts: ConceptSet,
    concept: str,
    anchor: str,
    replay: DistillSettings,
    sampling: SamplingSettings,
) -> ReplayRows:
    """`replay.replay_per_concept` teacher latents per concept, spread over its prompts (at least one each)."""
    if concept == anchor:
        raise ValueError(f"the anchor must differ from the concept ({concept!r})")
    forget, target = concepts[concept], concepts[anchor]
    retained = [c for c in concepts.concepts if c.name != concept]

    def render(prompts: list[str]):
        """k latents per prompt (distinct noise each), k spreading `replay_per_concept` over the prompts."""
        k = max(1, -(-replay.replay_per_concept // len(prompts)))
        latents = generator.sample(
            prompts, k, replay.seed, sampling.steps, sampling.guidance, teacher, sampling.batch_size, latents=True
        )
        return latents, [p for p in prompts for _ in range(k)]

    forget_x0, forget_prompts = render(list(forget.prompts))
    retain = [render(list(c.prompts)) for c in retained]
    retain_x0 = torch.cat([x for x, _ in retain])
    retain_prompts = [p for _, prompts in retain for p in prompts]
    return generator.replay_rows(forget_x0, forget_prompts, list(target.prompts), retain_x0, retain_prompts)
