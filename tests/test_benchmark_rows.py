"""The benchmark's evaluation row on hand-made measurements: relative retain in and across domains, the share
of samples unchanged, drawn-as-anchor, the collapse check and the pipeline's gates, each with a known answer."""

from __future__ import annotations

import pytest
import torch

from benchmarks.continual import Evaluation, diversity
from lethe.models.concepts import CONCEPTS
from lethe.models.judge import Judge
from tests.conftest import shipped_settings

N = 4  # samples per concept


def measurement(judged_as: dict[str, list[str]], spread: dict[str, float], images: torch.Tensor) -> dict:
    """A measurement in the shape `Evaluation.measure` returns: every concept judged as itself N times
    unless `judged_as` says otherwise; `spread` overrides a concept's diversity (1.0 otherwise)."""
    m = {"acc": {}, "hits": {}, "n": {}, "first": {}, "prob": {}, "pred": {}, "diversity": {}}
    for c in CONCEPTS:
        pred = torch.tensor([CONCEPTS.index(x) for x in judged_as.get(c, [c] * N)])
        hits = int((pred == CONCEPTS.index(c)).sum())
        m["acc"][c], m["hits"][c], m["n"][c] = hits / N, hits, N
        m["first"][c] = m["pred"][c] = pred
        m["prob"][c] = hits / N
        m["diversity"][c] = spread.get(c, 1.0)
    m["images"], m["labels"] = images, torch.arange(len(CONCEPTS)).repeat_interleave(N)
    return m


def evaluation() -> tuple[Evaluation, torch.Tensor]:
    torch.manual_seed(0)
    settings = shipped_settings()
    images = torch.rand(len(CONCEPTS) * N, 1, 16, 16) * 2 - 1
    real = (torch.rand(len(CONCEPTS) * N, 1, 16, 16) * 2 - 1, torch.arange(len(CONCEPTS)).repeat_interleave(N))
    ev = Evaluation(Judge.load(settings.paths.judge), real, settings, N, N, seed=0)
    ev.base = measurement({}, {}, images)
    ev.base["kid"] = ev.kid(ev.base, CONCEPTS, CONCEPTS)
    return ev, images


def test_the_row_of_a_hand_made_step():
    ev, images = evaluation()
    after = measurement(
        {"trouser": ["dress", "dress", "dress", "trouser"], "coat": ["coat", "coat", "bag", "bag"]},
        {"trouser": 0.3},
        images,
    )
    retained = [c for c in CONCEPTS if c != "trouser"]
    after["kid"] = ev.kid(after, retained, CONCEPTS)
    row = ev.row_of(after, CONCEPTS, ["trouser"], "trouser", {"trouser": "dress"}, parent=ev.base)
    assert row["forget_acc"] == 0.25 and row["forget_n"] == N
    assert row["retain_acc_in"] == round(8.5 / 9, 4)  # nine retained clothing concepts, coat half right
    assert row["retain_acc_cross"] == 1.0  # the digits and letters are untouched
    kept = len(CONCEPTS) - 1
    assert row["retain_acc"] == round((kept - 0.5) / kept, 4)
    assert row["unchanged"] == round((kept * N - 2) / (kept * N), 4)
    assert row["kid_ratio"] == 1.0  # the same images as the base on the retained concepts
    assert row["drawn_as_anchor"] == 0.75 and row["drawn_as_anchor_each"] == {"trouser": 0.75}
    # trousers drawn at 0.3 of the anchor's (dress's) base diversity: collapsed
    assert row["collapsed"] and row["diversity_worst"] == "trouser" and row["diversity_ratio_min"] == 0.3
    assert row["rejected"] and any("trouser" in reason for reason in row["gate_reasons"])


def test_a_clean_step_passes_the_gates_and_does_not_collapse():
    ev, images = evaluation()
    after = measurement({"trouser": ["dress"] * N}, {"trouser": 0.9}, images)
    after["kid"] = ev.kid(after, [c for c in CONCEPTS if c != "trouser"], CONCEPTS)
    row = ev.row_of(after, CONCEPTS, ["trouser"], "trouser", {"trouser": "dress"}, parent=ev.base)
    assert row["forget_acc"] == 0.0 and row["drawn_as_anchor"] == 1.0
    assert not row["collapsed"] and row["diversity_ratio_min"] == 0.9
    assert row["rejected"] is False and row["gate_reasons"] == []


def test_diversity_is_zero_for_identical_images_and_grows_with_spread():
    judge = Judge.load(shipped_settings().paths.judge)
    same = torch.zeros(8, 1, 16, 16)
    assert diversity(judge, same) == 0.0
    torch.manual_seed(1)
    assert diversity(judge, torch.rand(8, 1, 16, 16) * 2 - 1) > 0.0


def test_the_tuning_rule_keeps_collapsed_and_rejected_configurations_out():
    from benchmarks.tune import choose

    floors = {"pullover": 0.10, "digit_4": 0.0}

    def run(forget_each, retain, collapsed=False, rejected=False):
        last = {"step": 1, "forget_acc_each": forget_each, "forget_acc": max(forget_each.values())}
        last.update(retain_acc=retain, collapsed=collapsed, rejected=rejected)
        return ({}, [{"step": 0}, last])

    within = {"pullover": 0.12, "digit_4": 0.04}  # 12% <= 10% floor + 3; 4% <= 2% + 3
    runs = [
        run(within, 0.99),
        run({"pullover": 0.0, "digit_4": 0.0}, 1.0, collapsed=True),  # best numbers, but collapsed
        run(within, 0.995, rejected=True),
        run({"pullover": 0.14, "digit_4": 0.0}, 1.0),  # 14% > 13%: outside its anchor's confusion
    ]
    assert choose(runs, floors) == 0
    # nothing qualifies: the lowest forget among uncollapsed configurations that keep >= 95%
    fallback = [run({"pullover": 0.3, "digit_4": 0.2}, 0.97), runs[1], run({"pullover": 0.2, "digit_4": 0.2}, 0.96)]
    assert choose(fallback, floors) == 2


def test_the_anchors_confusion_on_hand_made_judgements():
    from benchmarks.measures import anchor_confusion

    trouser, dress = CONCEPTS.index("trouser"), CONCEPTS.index("dress")
    # 10 of the anchor's (dress's) samples: the judge calls 3 of them trousers, 6 dresses, 1 a coat
    predicted = torch.tensor([trouser] * 3 + [dress] * 6 + [CONCEPTS.index("coat")])
    confusion = anchor_confusion(predicted, trouser)
    assert confusion["floor"] == 0.3 and confusion["n"] == 10
    low, high = confusion["floor_ci"]
    assert low < 0.3 < high and 0.0 < low and high < 1.0
    assert anchor_confusion(torch.tensor([dress] * 8), trouser)["floor"] == 0.0  # never confused
    with pytest.raises(ValueError, match="no samples"):
        anchor_confusion(torch.tensor([], dtype=torch.long), trouser)
