"""The LoRA fit in rounds: rows found against the student between phases are learnt, and only then."""

from __future__ import annotations

import copy

import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.lora_distill import DistilRows, distil_lora, lora_modules, teacher_rows, unexplained
from lethe.models.text_generator import PromptSet
from lethe.tasks.operations.export_distilled import attack_rounds
from tests.conftest import small_settings
from tests.sd_folder import tiny_text_to_image


def rows_of(generator, prompts: list[str], n: int, change: float, seed: int) -> DistilRows:
    """n noised rows on `prompts`, whose target is the plain UNet's output moved by `change`."""
    rng = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, 4, 8, 8, generator=rng)
    t = torch.randint(100, (n,), generator=rng)
    text = generator.encode_prompts([prompts[i % len(prompts)] for i in range(n)])
    plain = teacher_rows(generator.unet, AdapterStack(), latents, t, text, 64)
    return DistilRows(latents, t, text, plain.base + change, plain.base)


def lora_weights(fitted) -> list[torch.Tensor]:
    return [p for n, p in fitted.unet.named_parameters() if "lora_" in n]


def test_a_fit_in_rounds_learns_what_each_round_found_and_only_after_finding_it(tmp_path):
    generator = tiny_text_to_image(tmp_path)
    rows = rows_of(generator, ["a photo of trousers", "a dress"], 64, 0.1, 0)
    found = rows_of(generator, ["the number seven"], 32, -0.5, 1)  # where the plain rows teach nothing
    modules = lora_modules(generator.unet, ["up_blocks.1"])
    calls = []

    def attacked(student, round_):
        calls.append((round_, any(p.requires_grad for p in student.parameters()), not student.training))
        return found

    fit = dict(modules=modules, rank=4, steps=90, batch_size=16, lr=3e-3, seed=0)
    plain = distil_lora(generator.unet, rows, **fit)
    rounds = distil_lora(generator.unet, rows, **fit, rounds=2, attacked=attacked, attacked_share=0.5)
    assert calls == [(0, False, True), (1, False, True)]  # after the 1st and 2nd of 3 phases, the student frozen
    assert [h["step"] for h in rounds.history if "round" in h] == [30, 60]
    assert unexplained(rounds.unet, found, 64) < 0.5 * unexplained(plain.unet, found, 64)
    # no round: whatever `attacked` and the share, the same draws and the same fit as before rounds existed
    same = distil_lora(generator.unet, rows, **fit, rounds=0, attacked=attacked, attacked_share=0.5)
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(lora_weights(plain), lora_weights(same)))
    with pytest.raises(ValueError, match="needs `attacked`"):
        distil_lora(generator.unet, rows, **fit, rounds=1)
    with pytest.raises(ValueError, match="at least one attacked row"):
        distil_lora(generator.unet, rows, **fit, rounds=1, attacked=attacked, attacked_share=0.01)
    with pytest.raises(ValueError, match="fewer than steps"):
        small_settings(export__attack_rounds=3, export__steps=3)


def test_the_export_attacks_the_student_and_takes_the_versions_outputs_as_targets(tmp_path):
    generator = tiny_text_to_image(tmp_path).with_concepts([PromptSet("trouser", ("a photo of trousers",))])
    settings = small_settings(export__attack_rows=8)
    attacked = attack_rounds(
        generator, AdapterStack(), ["trouser"], settings.export, settings.recovery, settings.sampling
    )
    student = copy.deepcopy(generator.unet)  # a student that differs from the version (here: the plain UNet)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    found = attacked(student, 0)
    assert len(found) == 8
    assert torch.equal(found.text, found.text[:1].expand_as(found.text))  # one vector per concept and round
    prompts = generator.encode_prompts(["a photo of trousers", ""])
    assert all(not torch.allclose(found.text[0], p) for p in prompts)  # the attack's vector, not a prompt
    version = teacher_rows(generator.unet, AdapterStack(), found.latents, found.timesteps, found.text, 8)
    assert torch.allclose(found.targets, version.targets)  # the version's outputs on the attacked rows ...
    with torch.no_grad():
        own = student(found.latents, found.timesteps, encoder_hidden_states=found.text).sample
    assert not torch.allclose(found.targets, own, atol=1e-3)  # ... not the student's
    assert not torch.equal(attacked(student, 1).text[0], found.text[0])  # each round its own attack
