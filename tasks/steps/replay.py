"""Replay for any generator kind: the teacher's forget and retain sets of one request. Each kind's way of
rendering replay (class labels, or prompt sets in latent space) lives in one dict, by kind, so the flow
asks for replay without knowing which kind it holds. A replay object gives `anchor`, `rows(generator)`
(what the training pool reads) and the tensors that DVC versions."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.text_generator import TextToImageGenerator
from lethe.tasks.settings import DistillSettings, SamplingSettings
from lethe.tasks.steps.distill import distill
from lethe.tasks.steps.distill_prompts import distill_prompts

REPLAY = {Generator.kind: distill, TextToImageGenerator.kind: distill_prompts}


def replay(
    generator,
    teacher: AdapterStack,
    judge,
    concept: str,
    anchor: str | None,
    forgotten: list[str],
    distill_settings: DistillSettings,
    sampling: SamplingSettings,
    progress=None,
    prompts: tuple[str, ...] = (),
    anchor_prompts: tuple[str, ...] = (),
    avoid: tuple[str, ...] = (),
):
    """The request's replay sets, rendered by the teacher (the production model); a request's own `prompts`
    and `anchor_prompts` replace the concept file's (kinds without prompts refuse them). The automatic anchor
    is chosen among retained concepts not in `avoid` (the anchors earlier attempts of the request tried)."""
    if generator.kind not in REPLAY:
        raise ValueError(f"no replay for generator kind {generator.kind!r}; known: {', '.join(REPLAY)}")
    return REPLAY[generator.kind](
        generator,
        teacher,
        judge,
        concept,
        anchor,
        forgotten,
        distill_settings,
        sampling,
        progress,
        prompts=tuple(prompts),
        anchor_prompts=tuple(anchor_prompts),
        avoid=tuple(avoid),
    )


replay_task = task(replay, name="distill-replay", cache_policy=NO_CACHE)
