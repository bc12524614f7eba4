"""Teacher replay and the automatic anchor: the retained concept the judge most often sees in the teacher's
samples of the forgotten concept, never the concept itself or one forgotten earlier."""

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.concepts import CONCEPTS
from lethe.models.judge import Judge
from lethe.tasks.steps.distill import distill, nearest_retained
from tests.conftest import small_settings, tiny_generator


def judge_preferring(*ranking: str) -> Judge:
    """A real judge whose logits ignore the image: `ranking[0]` scores highest, then the next, and so on."""
    judge = Judge(list(CONCEPTS), 16, 1, 8, 16).eval()
    with torch.no_grad():
        judge.head.weight.zero_()
        judge.head.bias.fill_(-10.0)
        for i, name in enumerate(ranking):
            judge.head.bias[CONCEPTS.index(name)] = 10.0 - i
    return judge


def test_the_anchor_is_the_most_probable_retained_candidate():
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    judge = judge_preferring("trouser", "coat", "bag")
    assert nearest_retained(judge, images, [c for c in CONCEPTS if c != "trouser"]) == "coat"
    assert nearest_retained(judge, images, ["bag", "dress"]) == "bag"


def test_distill_skips_the_concept_and_earlier_forgotten_ones_when_it_picks_the_anchor():
    settings = small_settings()
    generator = tiny_generator()
    judge = judge_preferring("trouser", "coat", "bag")
    replay = distill(generator, AdapterStack(), judge, "trouser", None, [], settings.distill, settings.sampling)
    assert replay.anchor == "coat"
    replay = distill(generator, AdapterStack(), judge, "trouser", None, ["coat"], settings.distill, settings.sampling)
    assert replay.anchor == "bag"  # coat is forgotten: it cannot be what trousers turn into
    given = distill(generator, AdapterStack(), judge, "trouser", "dress", [], settings.distill, settings.sampling)
    assert given.anchor == "dress"
    n = settings.distill.replay_per_concept
    assert given.forget_images.shape == (n, 1, 16, 16)
    assert given.retain_images.shape[0] == n * (len(CONCEPTS) - 1)
    assert CONCEPTS.index("trouser") not in given.retain_labels.tolist()
