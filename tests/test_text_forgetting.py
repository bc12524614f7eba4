"""Forgetting on the shipped text-to-image model (trained by `dvc repro`): one adapter step on a small budget
drives the judged accuracy of the concept's own prompts far down while retained concepts hold; the held-out
paraphrases, which the step never saw, are measured too."""

from __future__ import annotations

import pytest

from lethe.models.adapter_stack import AdapterStack
from lethe.models.judge import Judge
from lethe.models.text_generator import TextToImageGenerator
from lethe.tasks.concept_sets import load_concept_set
from lethe.tasks.steps.distill_prompts import distill_prompts
from lethe.tasks.steps.train_adapter import build_pool, train_on_pool
from tests.conftest import shipped_settings, small_settings

pytestmark = pytest.mark.slow
FOLDER, JUDGE = shipped_settings().paths.text_to_image, shipped_settings().paths.judge
RETAINED = ["dress", "sneaker", "bag", "digit_1", "digit_7"]
GUIDANCE, STEPS = 4.0, 10


def judged(generator, adapters, judge, concepts, prompts_of, n=24) -> dict[str, float]:
    """Share of samples the judge calls by the concept's name, over the given prompts of each concept."""
    out = {}
    for c in concepts:
        prompts = prompts_of(c)
        images = generator.sample(prompts, max(1, n // len(prompts)), 99, STEPS, GUIDANCE, adapters)
        out[c] = float((judge.classify(images) == judge.concepts.index(c)).float().mean())
    return out


def test_one_step_forgets_trouser_prompts_and_keeps_the_rest():
    generator, judge = TextToImageGenerator.from_folder(FOLDER), Judge.load(JUDGE)
    concepts = load_concept_set(FOLDER / "concepts.yaml")
    s = small_settings(
        sampling__steps=STEPS,
        sampling__guidance=GUIDANCE,
        distill__replay_per_concept=16,
        train__steps=300,
        train__batch_size=32,
        train__pool_rows=3200,
        adapter__placement="fixed",
        adapter__targets=["mid_block", "up_blocks.1"],
        adapter__intensity=1.5,  # what DECISIONS.md's numbers for this test were measured at
    )

    def prompts(c):
        return concepts[c].prompts

    def held_out(c):
        return concepts[c].held_out

    teacher = AdapterStack()
    before = judged(generator, teacher, judge, ["trouser"] + RETAINED, prompts)
    before_held = judged(generator, teacher, judge, ["trouser"], held_out)
    generator.with_concepts(concepts.concepts)
    rows = distill_prompts(generator, teacher, judge, "trouser", "dress", [], s.distill, s.sampling).rows(generator)
    pool = build_pool(generator, teacher, rows, s.train, retain_targets=s.train.retain_space == "eps")
    trained = train_on_pool(generator, teacher, pool, s.adapter, s.train, "request-1")
    after = judged(generator, trained.stack, judge, ["trouser"] + RETAINED, prompts)
    after_held = judged(generator, trained.stack, judge, ["trouser"], held_out)
    print("before", before, before_held, "\nafter", after, after_held)
    assert before["trouser"] >= 0.7, "the base must draw trousers when asked, for this test to mean anything"
    assert after["trouser"] <= 0.25 * before["trouser"]
    assert after_held["trouser"] <= 0.5 * before_held["trouser"]  # paraphrases never trained on move too
    for concept in RETAINED:
        assert after[concept] >= before[concept] - 0.15, concept
    kept = sum(after[c] for c in RETAINED) / len(RETAINED)
    assert kept >= 0.9 * sum(before[c] for c in RETAINED) / len(RETAINED)


def test_the_shipped_folder_loads_with_diffusers_own_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        FOLDER, local_files_only=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ours = TextToImageGenerator.from_folder(FOLDER)
    assert sum(p.numel() for p in pipe.unet.parameters()) == sum(p.numel() for p in ours.unet.parameters())
    concepts = load_concept_set(FOLDER / "concepts.yaml")
    assert len(concepts.names) == 20 and all(len(concepts[c].held_out) >= 2 for c in concepts.names)
