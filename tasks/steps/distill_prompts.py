"""Distill for a text-to-image generator: the teacher renders latent replay of the concept's own prompts
(the forget set) and of every other concept's prompts (the retain set, concepts forgotten earlier included:
the teacher renders those as their anchors, so distilling onto them keeps them forgotten). The forget rows
are paired with the anchor's prompts, so the student learns to draw the anchor when asked for the concept.
Held-out paraphrases are never used here: they are kept for evaluation. Without a given anchor,
`distill.anchor_rule` picks it from the decoded replay, as for the class-conditional kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.concepts import DOMAINS
from lethe.models.distill_targets import ReplayRows
from lethe.models.text_generator import TextToImageGenerator
from lethe.tasks.settings import DistillSettings, SamplingSettings
from lethe.tasks.steps.anchor_choice import choose_anchor


@dataclass
class PromptReplay:
    """Teacher latents with the prompt each was drawn with; what the DVC replay sets hold."""

    forget_x0: torch.Tensor
    forget_prompts: list[str]
    anchor_prompts: list[str]
    retain_x0: torch.Tensor
    retain_prompts: list[str]
    anchor: str

    def rows(self, generator: TextToImageGenerator) -> ReplayRows:
        return generator.replay_rows(
            self.forget_x0, self.forget_prompts, self.anchor_prompts, self.retain_x0, self.retain_prompts
        )

    def forget_tensors(self) -> dict[str, torch.Tensor]:
        return {"latents": self.forget_x0, **prompt_tensors(self.forget_prompts, "prompts")}

    def retain_tensors(self) -> dict[str, torch.Tensor]:
        return {"latents": self.retain_x0, **prompt_tensors(self.retain_prompts, "prompts")}


def prompt_tensors(prompts: list[str], name: str) -> dict[str, torch.Tensor]:
    """Prompts as safetensors can hold them: the UTF-8 bytes of their JSON list."""
    return {f"{name}_json_utf8": torch.tensor(list(json.dumps(prompts).encode()), dtype=torch.uint8)}


def distill_prompts(
    generator: TextToImageGenerator,
    teacher: AdapterStack,
    judge,
    concept: str,
    anchor: str | None,
    forgotten: list[str],
    replay: DistillSettings,
    sampling: SamplingSettings,
    progress=None,
    prompts: tuple[str, ...] = (),
    anchor_prompts: tuple[str, ...] = (),
    avoid: tuple[str, ...] = (),
) -> PromptReplay:
    """`replay.replay_per_concept` teacher latents per concept, spread over its prompts (at least one each).
    A request's own `prompts` replace the concept's for the forget set, its `anchor_prompts` the anchor's as
    the teacher's target; held-out paraphrases are refused as either. An automatic anchor is never in `avoid`."""
    if concept == anchor:
        raise ValueError(f"the anchor must differ from the concept ({concept!r})")
    generator.labels([concept] + ([anchor] if anchor else []))

    def render(prompts: list[str]):
        """k latents per prompt (distinct noise each), k spreading `replay_per_concept` over the prompts."""
        k = max(1, -(-replay.replay_per_concept // len(prompts)))
        latents = generator.sample(
            prompts, k, replay.seed, sampling.steps, sampling.guidance, teacher, sampling.batch_size, latents=True
        )
        return latents, [p for p in prompts for _ in range(k)]

    held_out = {p for c in generator.paraphrased for p in generator.prompts_of(c, held_out=True)}
    leaked = sorted(held_out & set(prompts + anchor_prompts))
    if leaked:
        raise ValueError(f"held-out paraphrases are kept for evaluation and cannot be trained on: {leaked}")
    forget_x0, forget_prompts = render(list(prompts) or generator.prompts_of(concept))
    candidates = []  # the judge is only needed to choose an anchor
    if anchor is None:
        candidates = [c for c in generator.concepts if c not in (concept, *forgotten, *avoid) and c in judge.concepts]
        if not candidates:
            raise ValueError(
                "no retained concept is left to serve as an anchor"
                + (f" (earlier attempts tried {', '.join(avoid)})" if avoid else "")
            )
    retained = [c for c in generator.concepts if c != concept]
    retain = []
    for i, c in enumerate(retained):
        retain.append(render(generator.prompts_of(c)))
        if progress:
            progress(i + 1, len(retained))
    retain_x0 = torch.cat([x for x, _ in retain])
    if anchor is None:  # judged on the decoded replay; every latent is labelled by its concept
        names = [c for c, (x, _) in zip(retained, retain) for _ in range(len(x))]
        domains = DOMAINS if replay.anchor_domain == "same" else None
        anchor = choose_anchor(
            judge,
            concept,
            generator.decode(forget_x0),
            generator.decode(retain_x0),
            names,
            candidates,
            replay.anchor_rule,
            domains,
        ).anchor
    return PromptReplay(
        forget_x0,
        forget_prompts,
        list(anchor_prompts) or generator.prompts_of(anchor),
        retain_x0,
        [p for _, prompts in retain for p in prompts],
        anchor,
    )
