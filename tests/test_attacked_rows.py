"""Adversarial forget rows: the in-training recovery attack and the rows it leaves (models/attacked_rows.py)."""

import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.attacked_rows import AttackedRows
from lethe.models.distill_targets import ReplayRows
from lethe.tasks.steps.train_adapter import attacked_rows, new_student, train_adapter
from tests.conftest import small_settings, tiny_generator


def concept_images(n=8, seed=0):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_rows_on_an_attack_vector_are_learnt_by_the_new_adapter_only():
    generator = tiny_generator()
    settings = small_settings()
    student = new_student(generator, AdapterStack(), settings.adapter, "request-1", ["mid_block"])
    for p in student.adapters["request-1"].parameters():  # a field that already moves features, as mid-training
        torch.nn.init.normal_(p, std=0.05)
    rows = AttackedRows(generator, AdapterStack(), concept_images(), anchor_label=3, pool_rows=16)
    final = rows.attack(student, "request-1", intensity=2.0, steps=3, lr=0.05, batch_size=4, seed=0)
    assert len(rows) == 1 and final > 0
    assert student.slots["request-1"].intensity == 1.0  # attacked at 2.0, left as it was
    base = {k: v.clone() for k, v in generator.state_dict().items()}
    trainable = list(student.adapters["request-1"].parameters())
    optimiser = torch.optim.Adam(trainable, lr=0.01)
    losses = []
    for _ in range(30):
        loss = rows.loss(student, "request-1", 2.0, 8, torch.Generator().manual_seed(1))  # the same rows each time
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]  # the adapter learns to send the attack vector's rows to the anchor
    assert all(torch.equal(v, base[k]) for k, v in generator.state_dict().items())  # the base never moves
    assert student.slots["request-1"].intensity == 1.0


def test_loss_before_any_attack_is_refused():
    rows = AttackedRows(tiny_generator(), AdapterStack(), concept_images(), anchor_label=3, pool_rows=4)
    with pytest.raises(RuntimeError, match="no attack has run"):
        rows.loss(AdapterStack(), "request-1", 1.0, 2, torch.Generator())


def test_training_runs_the_rounds_and_adds_the_adversarial_term_after_the_first():
    generator = tiny_generator()
    settings = small_settings(
        train__steps=6,
        train__adversarial__rounds=2,
        train__adversarial__attack_steps=2,
        train__adversarial__attack_batch=4,
        train__adversarial__rows=4,
        train__adversarial__pool_rows=8,
        adapter__placement="fixed",
    )
    seen = []
    result = train_adapter(
        generator,
        AdapterStack(),
        concept_images(6),
        concept_images(12, seed=1),
        torch.randint(2, 20, (12,)),
        "trouser",
        "dress",
        settings.adapter,
        settings.train.model_copy(update={"steps": 6}),
        "request-1",
        progress=lambda step, total, row: seen.append(row),
    )
    rounds = [h for h in result.history if "attack_round" in h]
    assert [(h["step"], h["attack_round"]) for h in rounds] == [(2, 1), (4, 2)]
    assert "adversarial" in result.history[-1]  # the last step trained on the kept vectors
    assert result.stack.slots["request-1"].intensity == settings.adapter.intensity


def test_no_rows_where_off_or_not_applicable():
    generator = tiny_generator()
    rows = ReplayRows.from_labels(concept_images(4), concept_images(4, 1), torch.tensor([2, 3, 4, 5]), 0, 1)
    off = small_settings().train
    on = small_settings(train__adversarial__rounds=1).train
    assert attacked_rows(generator, AdapterStack(), rows, off) is None
    assert attacked_rows(generator, AdapterStack(), None, on) is None
    assert isinstance(attacked_rows(generator, AdapterStack(), rows, on), AttackedRows)
    mixed = ReplayRows(
        rows.forget_x0, rows.forget_student, torch.tensor([1, 2, 1, 1]), rows.retain_x0, rows.retain_cond
    )
    with pytest.raises(ValueError, match="one anchor"):
        attacked_rows(generator, AdapterStack(), mixed, on)
