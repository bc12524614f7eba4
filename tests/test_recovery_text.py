"""Textual inversion as the recovery attack on a tiny random Stable-Diffusion-layout model: the vector stands in
for exactly one token and only while asked, the loss is the model's own (ε or v), the attack lowers it, its
samples come from the generator's own sampler, and the audit scores every forgotten concept."""

import pytest
import torch
import torch.nn.functional as F

from lethe.models.concepts import CONCEPTS
from lethe.models.recovery_attack import (
    attack_prompt,
    encode_latents,
    recover_token_embedding,
    row_in_place_of,
    sample_with_token_embedding,
)
from lethe.models.text_generator import PromptSet
from tests.conftest import small_settings
from tests.sd_folder import tiny_text_to_image


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def generator(request, tmp_path_factory):
    return tiny_text_to_image(tmp_path_factory.mktemp("sd"), request.param)


def table_of(generator):
    return generator.text_encoder.get_input_embeddings()


def test_the_vector_replaces_the_placeholder_only_while_asked_and_never_touches_the_encoder(generator):
    prompt, token = attack_prompt(generator.tokenizer)
    assert generator.tokenizer(prompt).input_ids.count(token) == 1
    assert token not in generator.tokenizer("").input_ids  # guidance's empty prompt holds no placeholder
    before = {k: v.clone() for k, v in generator.text_encoder.state_dict().items()}
    plain, empty = generator.encode_prompts([prompt]), generator.encode_prompts([""])
    other = table_of(generator).weight[token + 1].clone()
    with row_in_place_of(table_of(generator), token, table_of(generator).weight[token].clone()):
        assert torch.allclose(generator.encode_prompts([prompt]), plain, atol=1e-6)  # its own row: no change
    with row_in_place_of(table_of(generator), token, other):
        moved = generator.encode_prompts([prompt])
        assert torch.equal(generator.encode_prompts([""]), empty)
    assert not torch.allclose(moved, plain, atol=1e-4)
    assert torch.equal(generator.encode_prompts([prompt]), plain)  # the hook is gone once the block closes
    assert all(torch.equal(before[k], v) for k, v in generator.text_encoder.state_dict().items())
    with pytest.raises(ValueError, match="shape"):
        with row_in_place_of(table_of(generator), token, torch.zeros(3)):
            pass


def loss_with(generator, vector, latents, seed=7, rows=32):
    """The model's training loss for `vector` at the placeholder, on fixed draws of noise and timesteps."""
    prompt, token = attack_prompt(generator.tokenizer)
    rng = torch.Generator().manual_seed(seed)
    x0 = latents[torch.randint(len(latents), (rows,), generator=rng)]
    noise = torch.randn(x0.shape, generator=rng)
    t = torch.randint(generator.scheduler.config.num_train_timesteps, (rows,), generator=rng)
    with row_in_place_of(table_of(generator), token, vector):
        text = generator.encode_prompts([prompt])
    pred, _ = generator.predict_noise(generator.scheduler.add_noise(x0, noise, t), t, text.expand(rows, -1, -1))
    kind = generator.scheduler.config.prediction_type
    target = noise if kind == "epsilon" else generator.scheduler.get_velocity(x0, noise, t)
    return float(F.mse_loss(pred, target))


def test_the_attack_lowers_the_models_own_loss_moves_only_its_vector_and_is_seeded(generator):
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    latents = encode_latents(generator, torch.rand(16, 1, 16, 16) * 2 - 1)
    assert latents.shape == (16, *generator.latent_shape)
    vector, losses = recover_token_embedding(generator, None, latents, steps=40, lr=0.5, batch_size=8, seed=0)
    assert len(losses) == 40  # the budget: one Adam step per batch
    start = table_of(generator).weight.mean(0)
    assert loss_with(generator, vector, latents) < 0.995 * loss_with(generator, start, latents)  # ~2% here
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert not any(p.requires_grad for p in generator.parameters())
    again, _ = recover_token_embedding(generator, None, latents, steps=40, lr=0.5, batch_size=8, seed=0)
    assert torch.equal(vector, again)
    with pytest.raises(ValueError, match="at least one latent"):
        recover_token_embedding(generator, None, latents[:0], steps=1, lr=0.1, batch_size=4, seed=0)


def test_the_first_step_is_scored_with_the_target_the_model_was_trained_for(generator):
    latents = torch.randn(8, *generator.latent_shape)
    _, losses = recover_token_embedding(generator, None, latents, steps=1, lr=0.1, batch_size=4, seed=3)
    rng = torch.Generator().manual_seed(3)  # the attack's own draws, in its order
    x0 = latents[torch.randint(8, (4,), generator=rng)]
    noise = torch.randn(x0.shape, generator=rng)
    t = torch.randint(generator.scheduler.config.num_train_timesteps, (4,), generator=rng)
    prompt, token = attack_prompt(generator.tokenizer)
    with row_in_place_of(table_of(generator), token, table_of(generator).weight.mean(0)):
        text = generator.encode_prompts([prompt]).expand(4, -1, -1)
    pred, _ = generator.predict_noise(generator.scheduler.add_noise(x0, noise, t), t, text)
    velocity = generator.scheduler.get_velocity(x0, noise, t)
    expected = noise if generator.scheduler.config.prediction_type == "epsilon" else velocity
    assert losses[0] == pytest.approx(float(F.mse_loss(pred, expected)), rel=1e-5)
    assert losses[0] != pytest.approx(float(F.mse_loss(pred, velocity if expected is noise else noise)), rel=1e-3)


def test_attacked_samples_come_from_the_generators_own_guided_sampler(generator):
    prompt, token = attack_prompt(generator.tokenizer)
    own = table_of(generator).weight[token].clone()
    drawn = sample_with_token_embedding(generator, None, own, n=3, seed=1, steps=3, guidance=2.0)
    assert drawn.shape == (3, 1, 16, 16) and drawn.min() >= -1 and drawn.max() <= 1
    assert torch.allclose(drawn, generator.sample([prompt], 3, 1, 3, 2.0), atol=1e-5)
    # in latent space: the tiny random VAE's decoder all but ignores its input
    own_latents = sample_with_token_embedding(generator, None, own, 3, 1, 3, 2.0, latents=True)
    assert torch.allclose(own_latents, generator.sample([prompt], 3, 1, 3, 2.0, latents=True), atol=1e-5)
    other = table_of(generator).weight[token + 1].clone()
    moved = sample_with_token_embedding(generator, None, other, 3, 1, 3, 2.0, latents=True)
    assert not torch.allclose(moved, own_latents, atol=1e-3)


class SaysBag:  # a judge that names every image "bag"
    concepts = [*CONCEPTS, "my_hat"]

    def classify(self, images):
        return torch.full((len(images),), CONCEPTS.index("bag"))


def test_the_audit_scores_every_forgotten_concept_on_real_images_or_base_samples(generator):
    from lethe.tasks.steps.recovery_audit import BASE_SAMPLES, REAL, attacker_latents, attacker_source, audit_recovery

    sets = [PromptSet("bag", ("a leather bag",)), PromptSet("my_hat", ("a hat", "a red hat", "a green hat"))]
    generator.with_concepts(sets)
    s = small_settings(sampling__steps=2, sampling__guidance=2.0)
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(3)
    attacker = (torch.rand(len(labels), 1, 16, 16) * 2 - 1, labels)
    assert attacker_source(generator, "bag", attacker) == REAL
    assert attacker_source(generator, "my_hat", attacker) == BASE_SAMPLES  # no class of the split
    wrong_size = (torch.rand(4, 3, 32, 32), labels[:4])
    assert attacker_source(generator, "bag", wrong_size) == attacker_source(generator, "bag", None) == BASE_SAMPLES
    real = attacker_latents(generator, "bag", attacker, s.recovery, s.sampling)
    own = attacker[0][labels == CONCEPTS.index("bag")]
    assert torch.allclose(real, encode_latents(generator, own))
    drawn = attacker_latents(generator, "my_hat", attacker, s.recovery, s.sampling.model_copy(update={"steps": 1}))
    assert drawn.shape == (s.recovery.images, *generator.latent_shape)
    found = audit_recovery(generator, None, SaysBag(), ["bag", "my_hat"], attacker, s.recovery, s.sampling)
    assert found == {"bag": 1.0, "my_hat": 0.0}
    assert audit_recovery(generator, None, SaysBag(), ["bag"], None, s.recovery, s.sampling) == {"bag": 1.0}


def test_the_certificate_names_the_token_embedding_and_where_each_concepts_images_came_from():
    import json

    from lethe.tasks.operations.certificate import recovery_attack
    from lethe.tasks.steps.recovery_audit import BASE_SAMPLES, REAL

    budget = {"images": 8, "steps": 2, "lr": 0.05, "batch_size": 4, "samples": 4}
    tags = {
        "recovery.bag": "0.2500",
        "recovery.my_hat": "0.0000",
        "recovery.budget": json.dumps(budget),
        "recovery_attack": "token embedding",
        "recovery_images": json.dumps({"bag": REAL, "my_hat": BASE_SAMPLES}),
    }
    attack = recovery_attack(tags, {"gates.recovery_acc_max": "0.75"})
    assert attack["vector"] == "token embedding"
    assert [(r["concept"], r["judged"], r["images"]) for r in attack["rows"]] == [
        ("bag", "1 of 4", REAL),
        ("my_hat", "0 of 4", BASE_SAMPLES),
    ]
    older = {k: v for k, v in tags.items() if not k.startswith("recovery_")}  # a version from before this audit
    assert recovery_attack(older, {})["vector"] == "class embedding"
    assert {r["images"] for r in recovery_attack(older, {})["rows"]} == {REAL}
    assert not recovery_attack({"recovery": "not audited: why"}, {})["audited"]
