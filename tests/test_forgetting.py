"""Forgetting happens: on the shipped base generator and judge (trained by `dvc repro`), one ODE-adapter step
on a small budget drives the forgotten concept's judged accuracy far down while retained concepts hold."""

from __future__ import annotations

import pytest

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.judge import Judge
from lethe.models.sampler import sample
from lethe.tasks.steps.distill import distill
from lethe.tasks.steps.train_adapter import train_adapter
from tests.conftest import shipped_settings, small_settings

pytestmark = pytest.mark.slow
BASE, JUDGE = shipped_settings().paths.base, shipped_settings().paths.judge
RETAINED = ["dress", "sneaker", "bag", "digit_1", "digit_7"]


def judged(generator, adapters, judge, concepts, n=48, steps=10) -> dict[str, float]:
    images, labels = sample(generator, concepts, n, seed=99, steps=steps, adapters=adapters)
    predicted = judge.classify(images)
    return {
        c: float((predicted[labels == generator.concepts.index(c)] == generator.concepts.index(c)).float().mean())
        for c in concepts
    }


@pytest.mark.skipif(not (BASE / "lethe.json").is_file(), reason="no trained base: run `dvc repro`")
def test_one_step_forgets_trouser_and_keeps_the_rest():
    generator, judge = Generator.from_folder(BASE), Judge.load(JUDGE)
    s = small_settings(
        sampling__steps=10,
        distill__replay_per_concept=16,
        train__steps=150,
        train__batch_size=32,
        adapter__targets=["mid_block", "up_blocks.0"],
    )
    teacher = AdapterStack()
    before = judged(generator, teacher, judge, ["trouser"] + RETAINED)
    replay = distill(generator, teacher, judge, "trouser", "dress", [], s.distill, s.sampling)
    trained = train_adapter(
        generator,
        teacher,
        replay.forget_images,
        replay.retain_images,
        replay.retain_labels,
        "trouser",
        "dress",
        s.adapter,
        s.train,
        "request-1",
    )
    after = judged(generator, trained.stack, judge, ["trouser"] + RETAINED)
    print("before", before, "\nafter", after)
    assert before["trouser"] >= 0.7, "the base must render trousers for this test to mean anything"
    assert after["trouser"] <= 0.25 * before["trouser"]
    for concept in RETAINED:
        assert after[concept] >= before[concept] - 0.15, concept
    kept = sum(after[c] for c in RETAINED) / len(RETAINED)
    assert kept >= 0.9 * sum(before[c] for c in RETAINED) / len(RETAINED)
    # the dial is monotone on the trained adapter: less intensity, less forgetting (same noise, one sample of
    # slack in 48), and intensity 0 switches the step off exactly: the base comes back
    dial = [s.adapter.intensity, 0.5 * s.adapter.intensity, 0.25 * s.adapter.intensity, 0.0]
    curve = []
    for intensity in dial:
        trained.stack.set_intensity("request-1", intensity)
        curve.append(judged(generator, trained.stack, judge, ["trouser"])["trouser"])
    print("trouser accuracy at intensity", dict(zip(dial, curve)))
    assert curve[0] == after["trouser"] and curve[-1] == before["trouser"]
    assert all(later >= earlier - 1 / 48 for earlier, later in zip(curve, curve[1:])), curve
    assert curve[1] < before["trouser"], "half the intensity must still forget some"
