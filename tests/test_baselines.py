"""Mechanics of the benchmark's baselines on a tiny generator (not their quality): what each one trains,
that the teacher is left untouched, and that each loss is the one its source describes."""

import pytest
import torch

from benchmarks.baselines import (
    lora_modules,
    lora_size,
    negative_guidance_targets,
    retrain_without,
    train_esd,
    train_full_finetune,
    train_lora,
    weight_saliency,
)
from lethe.models.concepts import CONCEPTS
from lethe.models.generator import build_unet
from lethe.tasks.settings import SettingsError
from lethe.tasks.steps.train_adapter import build_targets
from tests.conftest import shipped_settings, small_settings, tiny_generator


def pool_and_teacher(**changes):
    generator = tiny_generator()
    forget = torch.rand(4, 1, 16, 16) * 2 - 1
    retain, labels = torch.rand(8, 1, 16, 16) * 2 - 1, torch.randint(2, 20, (8,))
    settings = small_settings(**changes)
    pool = build_targets(generator, None, forget, retain, labels, "trouser", "dress", settings.train)
    return generator, pool, settings


def state(generator):
    return {k: v.clone() for k, v in generator.unet.state_dict().items()}


def changed(a, b):
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_dfr_ft_trains_every_weight_of_a_copy():
    teacher, pool, params = pool_and_teacher()
    before = state(teacher)
    student, trainable, _ = train_full_finetune(teacher, pool, params)
    assert changed(before, state(teacher)) == []
    assert trainable == sum(p.numel() for p in teacher.unet.parameters())
    assert len(changed(before, state(student))) > 0.5 * len(before)
    assert not any(p.requires_grad for p in student.unet.parameters())


def test_esd_target_is_negative_guidance_away_from_the_concept():
    teacher, pool, params = pool_and_teacher()
    targets = negative_guidance_targets(teacher, pool, eta=2.0, batch_size=256)
    xt, t, labels = pool.xt[: pool.n_forget], pool.t[: pool.n_forget], pool.student_cond[: pool.n_forget]
    cond, _ = teacher.predict_noise(xt, t, labels)
    uncond, _ = teacher.predict_noise(xt, t, torch.full_like(labels, teacher.null_label))
    assert torch.allclose(targets, uncond - 2.0 * (cond - uncond), atol=1e-6)
    before = state(teacher)
    student, trainable, _ = train_esd(teacher, pool, params)  # params.yaml: the conditioning path
    assert params.baselines.esd.variant == "conditioning"
    moved = changed(before, state(student))
    assert changed(before, state(teacher)) == [] and moved
    assert all("class_embedding" in n or "time_emb_proj" in n for n in moved)
    assert trainable == sum(p.numel() for n, p in teacher.unet.named_parameters() if n in esd_names(teacher))
    everything = params.override({"baselines.esd.variant": "u"})
    student, trainable, _ = train_esd(teacher, pool, everything)
    assert trainable == sum(p.numel() for p in teacher.unet.parameters())
    assert len(changed(before, state(student))) > len(moved)


def esd_names(generator) -> set[str]:
    return {n for n, _ in generator.unet.named_parameters() if "class_embedding" in n or "time_emb_proj" in n}


def test_fade_lora_trains_low_rank_updates_on_the_most_salient_convs_and_merges_them():
    teacher, pool, params = pool_and_teacher(
        baselines__fade_lora__rank=2,
        baselines__fade_lora__modules=3,
        baselines__fade_lora__budget=None,
        baselines__fade_lora__lr=1e-2,
    )
    assert params.baselines.fade_lora.scope == "candidates"  # ranked within Lethe's candidate blocks
    candidates = list(params.adapter.candidates)
    scores = weight_saliency(teacher, pool, params.baselines.fade_lora.saliency_rows, candidates)
    assert scores and all(any(n.startswith(b + ".") for b in candidates) for n in scores)
    assert not any(p.requires_grad for p in teacher.unet.parameters())
    before = state(teacher)
    student, trainable, _, modules = train_lora(teacher, pool, params)
    ranked = [n for n in sorted(scores, key=scores.get, reverse=True) if n not in ("conv_in", "conv_out")]
    assert modules == ranked[:3]
    convs = dict(teacher.unet.named_modules())
    assert trainable == sum(
        2 * (convs[m].in_channels * convs[m].kernel_size[0] * convs[m].kernel_size[1] + convs[m].out_channels)
        for m in modules
    )
    assert changed(before, state(teacher)) == []
    assert set(state(student)) == set(before)  # merged: plain weights, no lora_A/lora_B left
    assert sorted(k.rsplit(".", 1)[0] for k in changed(before, state(student))) == sorted(modules)


def test_fade_lora_budget_takes_salient_convs_in_order_while_their_lora_fits():
    teacher, pool, params = pool_and_teacher()
    convs = {n: m for n, m in teacher.unet.named_modules() if isinstance(m, torch.nn.Conv2d)}
    eligible = [n for n in convs if n not in ("conv_in", "conv_out")]
    big, small = (
        max(eligible, key=lambda n: lora_size(convs[n], 2)),
        min(eligible, key=lambda n: lora_size(convs[n], 2)),
    )
    assert lora_size(convs[big], 2) > lora_size(convs[small], 2)
    others = [n for n in eligible if n not in (big, small)]
    scores = {big: 3.0, small: 2.0, others[0]: 1.0, "conv_in": 9.0}  # conv_in is never a target
    budget = lora_size(convs[small], 2) + lora_size(convs[others[0]], 2)
    assert lora_modules(teacher.unet, scores, 2, None, budget) == [small, others[0]]  # the top one is too big
    assert lora_modules(teacher.unet, scores, 2, None, budget - 1) == [small]
    assert lora_modules(teacher.unet, scores, 2, 2, None) == [big, small]
    with pytest.raises(ValueError, match="fits"):
        lora_modules(teacher.unet, scores, 2, None, lora_size(convs[small], 2) - 1)
    budgeted = params.override({"baselines.fade_lora.rank": 2, "baselines.fade_lora.budget": budget})
    assert budgeted.baselines.fade_lora.modules is None  # params.yaml sizes fade-lora by budget
    _, trainable, _, modules = train_lora(teacher, pool, budgeted)
    assert trainable <= budget and trainable == sum(lora_size(convs[m], 2) for m in modules)
    with pytest.raises(SettingsError, match="exactly one"):
        params.override({"baselines.fade_lora.modules": 3})


def test_retrain_never_sees_the_forgotten_concepts():
    recipe = shipped_settings().override({"base.block_channels": [16, 32], "base.steps": 2, "base.batch_size": 16}).base
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(3)
    images = torch.rand(len(labels), 1, 16, 16) * 2 - 1
    generator, metrics = retrain_without(images, labels, [1, 13], recipe, 16, None)
    torch.manual_seed(recipe.seed)
    fresh = build_unet(16, 1, len(CONCEPTS), recipe.block_channels, recipe.layers_per_block, recipe.norm_groups)
    trained, initial = generator.unet.class_embedding.weight, fresh.class_embedding.weight
    assert torch.equal(trained[[1, 13]], initial[[1, 13]])  # never drawn, so never updated
    assert not torch.equal(trained[[0, 2]], initial[[0, 2]])
    assert metrics["parameters"] == sum(p.numel() for p in generator.unet.parameters())
