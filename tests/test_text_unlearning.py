"""Unlearning mechanics on a tiny random Stable-Diffusion-layout model: a concept file of prompt sets, teacher
replay in latent space, an adapter trained on the conditional UNet, and guided samples that change."""

import pytest
import torch
import yaml

from lethe.models.adapter_stack import AdapterStack
from lethe.tasks.concept_sets import ConceptFileError, load_concept_set
from lethe.tasks.steps.distill_prompts import distill_prompts
from lethe.tasks.steps.train_adapter import build_pool, new_student, train_on_pool
from tests.conftest import small_settings
from tests.sd_folder import tiny_text_to_image

CONCEPTS = {
    "concepts": [
        {"name": "trouser", "prompts": ["a photo of trousers", "a pair of trousers"], "held_out": ["a pair of pants"]},
        {"name": "dress", "prompts": ["a dress"], "held_out": ["a summer dress"]},
        {"name": "bag", "prompts": ["a leather bag"]},
        {"name": "digit_3", "prompts": ["the digit 3"], "held_out": ["a handwritten three"]},
    ]
}


def concept_file(tmp_path, data=CONCEPTS):
    path = tmp_path / "concepts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_concept_file_is_validated_with_the_paths_of_its_mistakes(tmp_path):
    concepts = load_concept_set(concept_file(tmp_path))
    assert concepts.names == ["trouser", "dress", "bag", "digit_3"]
    assert concepts["trouser"].held_out == ["a pair of pants"]
    with pytest.raises(KeyError, match="unknown concept 'coat'"):
        concepts["coat"]
    bad = {"concepts": [{"name": "Trouser!", "prompts": []}, {"name": "bag", "prompt": ["a bag"]}]}
    with pytest.raises(ConceptFileError) as refused:
        load_concept_set(concept_file(tmp_path, bad))
    message = str(refused.value)
    assert "concepts.0.name" in message and "concepts.0.prompts" in message and "concepts.1.prompt" in message
    shared = {
        "concepts": [{"name": "a", "prompts": ["a bag"]}, {"name": "b", "prompts": ["x"], "held_out": ["A  bag"]}]
    }
    with pytest.raises(ConceptFileError, match="prompt 'A  bag' of 'b' is also a prompt of 'a'"):
        load_concept_set(concept_file(tmp_path, shared))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_concept_set(tmp_path / "none.yaml")


def test_an_adapter_trained_on_the_conditional_unet_changes_the_concept_and_nothing_below_it(tmp_path):
    generator = tiny_text_to_image(tmp_path)
    concepts = load_concept_set(concept_file(tmp_path))
    settings = small_settings(
        sampling__steps=3,
        sampling__guidance=2.0,
        distill__replay_per_concept=4,
        train__steps=6,
        train__retain_space="features",
        adapter__placement="saliency",
        adapter__candidates=["mid_block", "up_blocks.0", "up_blocks.1"],
        adapter__k=2,
    )
    generator.with_concepts(concepts.concepts)
    replay = distill_prompts(
        generator, AdapterStack(), None, "trouser", "dress", [], settings.distill, settings.sampling
    )
    rows = replay.rows(generator)
    assert rows.forget_x0.shape == (4, 4, 8, 8) and rows.retain_x0.shape == (12, 4, 8, 8)  # latents
    assert torch.equal(rows.forget_teacher[0], generator.encode_prompts(["a dress"])[0])  # paired with the anchor
    assert torch.equal(rows.forget_student[2], generator.encode_prompts(["a pair of trousers"])[0])
    held_out = generator.encode_prompts(["a pair of pants"])[0]
    assert not any(torch.equal(held_out, r) for r in torch.cat([rows.forget_student, rows.retain_cond]))
    base_state = {k: v.clone() for k, v in generator.unet.state_dict().items()}
    pool = build_pool(
        generator, AdapterStack(), rows, settings.train, retain_targets=settings.train.retain_space == "eps"
    )
    result = train_on_pool(generator, AdapterStack(), pool, settings.adapter, settings.train, "request-1")
    assert set(result.saliency) == {"mid_block", "up_blocks.0", "up_blocks.1"} and len(result.targets) == 2
    assert all(torch.equal(v, base_state[k]) for k, v in generator.unet.state_dict().items())  # base frozen
    torch.manual_seed(settings.train.seed)
    untrained = new_student(generator, AdapterStack(), settings.adapter, "request-1", result.targets)
    assert untrained.sha256() != result.stack.sha256()  # the fields moved away from the identity
    assert 0 < result.trainable_params < 0.05 * sum(p.numel() for p in generator.unet.parameters())
    before = generator.sample(["a photo of trousers"], 2, 0, 3, 2.0)
    after = generator.sample(["a photo of trousers"], 2, 0, 3, 2.0, adapters=result.stack)
    assert not torch.allclose(before, after)
    result.stack.set_intensity("request-1", 0.0)  # intensity 0 gives the base back exactly
    assert torch.equal(generator.sample(["a photo of trousers"], 2, 0, 3, 2.0, adapters=result.stack), before)
