"""Teacher replay and the automatic anchor: by default the retained candidate least often judged as the concept
(its confusion), the nearest of those, within the concept's domain; never the concept or one forgotten earlier."""

import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.concepts import CONCEPTS
from lethe.models.judge import Judge
from lethe.models.judge_plugin import PluginJudge
from lethe.tasks.steps.anchor_choice import choose_anchor, confusion, nearest_retained
from lethe.tasks.steps.distill import distill
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


class PixelJudge(torch.nn.Module):
    """A known judge: an image is the concept whose centre its first pixel is nearest to."""

    def __init__(self, centres: dict[str, float]):
        super().__init__()
        self.concepts = list(CONCEPTS)
        far = {c: 5.0 + i for i, c in enumerate(CONCEPTS)}
        self.register_buffer("centres", torch.tensor([centres.get(c, far[c]) for c in CONCEPTS]))

    def forward(self, x):
        return -50.0 * (x[:, 0, 0, :1] - self.centres).pow(2)


def filled(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 16, 16).clone()


def test_the_least_confused_anchor_on_a_known_judge():
    judge = PluginJudge(PixelJudge({"trouser": 0.0, "dress": 0.1, "digit_1": 0.15, "coat": 0.2, "bag": 0.6}))
    concept_images = filled([0.0] * 4)
    # teacher samples: half of the dresses look like trousers, coats, bags and ones look like themselves
    candidate_images = filled([0.0, 0.1, 0.2, 0.2, 0.6, 0.6, 0.15, 0.15])
    labels = ["dress", "dress", "coat", "coat", "bag", "bag", "digit_1", "digit_1"]
    candidates = ["dress", "coat", "bag", "digit_1"]
    assert confusion(judge, "trouser", candidate_images, labels) == {
        "dress": 0.5,
        "coat": 0.0,
        "bag": 0.0,
        "digit_1": 0.0,
    }
    # dress is nearest but confused; among the unconfused, digit_1 is nearest, coat nearest in trouser's domain
    nearest = choose_anchor(judge, "trouser", concept_images, candidate_images, labels, candidates, "nearest")
    assert nearest.anchor == "dress" == nearest_retained(judge, concept_images, candidates)
    anywhere = choose_anchor(judge, "trouser", concept_images, candidate_images, labels, candidates, "least-confused")
    assert anywhere.anchor == "digit_1" and anywhere.confusion["dress"] == 0.5
    domains = {c: ("digits" if c.startswith("digit") else "clothing") for c in CONCEPTS}
    same = choose_anchor(
        judge, "trouser", concept_images, candidate_images, labels, candidates, "least-confused", domains
    )
    assert same.anchor == "coat"


def test_an_anchor_choice_needs_samples_of_every_candidate_and_a_known_rule():
    judge = PluginJudge(PixelJudge({"trouser": 0.0, "coat": 0.2}))
    images = filled([0.2, 0.2])
    with pytest.raises(ValueError, match="no teacher samples of the anchor candidates"):
        choose_anchor(judge, "trouser", images, images, ["coat", "coat"], ["coat", "bag"], "least-confused")
    with pytest.raises(ValueError, match="unknown anchor rule"):
        choose_anchor(judge, "trouser", images, images, ["coat", "coat"], ["coat"], "closest")
    with pytest.raises(ValueError, match="no retained concept"):
        choose_anchor(judge, "trouser", images, images, ["coat", "coat"], [], "nearest")
