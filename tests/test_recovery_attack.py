"""The recovery attack's mechanics on a tiny generator: the vector stands in for exactly one class's embedding,
gradients reach it and nothing else, the budget is what it says, and it is deterministic."""

import pytest
import torch

from lethe.models.recovery_attack import embedding_in_place_of, recover_embedding, resurrect, sample_with_embedding
from lethe.models.sampler import concept_noise, ddim_sample
from tests.conftest import tiny_generator


def test_the_vector_replaces_one_class_embedding_and_leaves_the_others():
    generator = tiny_generator()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([10, 20, 30, 40])
    table = generator.unet.class_embedding.weight
    labels = torch.tensor([3, 7, 3, generator.null_label])
    with embedding_in_place_of(generator, 3, table[5].clone()):
        replaced, _ = generator.predict_noise(x, t, labels)
    as_five, _ = generator.predict_noise(x, t, torch.tensor([5, 7, 5, generator.null_label]))
    assert torch.allclose(replaced, as_five, atol=1e-6)
    plain, _ = generator.predict_noise(x, t, labels)  # the hook is gone once the block closes
    assert not torch.allclose(plain, as_five, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        with embedding_in_place_of(generator, 3, torch.zeros(3)):
            pass


def test_recovery_lowers_the_diffusion_loss_moves_only_the_vector_and_is_seeded():
    generator = tiny_generator()
    before = {k: v.clone() for k, v in generator.unet.state_dict().items()}
    images = torch.rand(16, 1, 16, 16) * 2 - 1
    vector, losses = recover_embedding(generator, None, images, steps=60, lr=0.05, batch_size=16, seed=0)
    assert len(losses) == 60  # the budget: one Adam step per batch
    assert sum(losses[-10:]) < sum(losses[:10])
    start = generator.unet.class_embedding.weight[: generator.null_label].mean(0)
    assert not torch.allclose(vector, start)
    assert all(torch.equal(before[k], v) for k, v in generator.unet.state_dict().items())
    assert not any(p.requires_grad for p in generator.unet.parameters())
    again, _ = recover_embedding(generator, None, images, steps=60, lr=0.05, batch_size=16, seed=0)
    assert torch.equal(vector, again)
    with pytest.raises(ValueError, match="at least one image"):
        recover_embedding(generator, None, images[:0], steps=1, lr=0.1, batch_size=4, seed=0)


def test_sampling_with_a_class_row_draws_what_that_class_draws_from_the_same_noise():
    generator = tiny_generator()
    row = generator.unet.class_embedding.weight[2].clone()
    drawn = sample_with_embedding(generator, None, row, n=3, seed=1, steps=3, guidance=2.0)
    noise = concept_noise(generator.image_shape, 3, 1, generator.null_label - 1)
    expected = ddim_sample(generator, torch.full((3,), 2), noise, 3, None, 2.0)
    assert drawn.shape == (3, 1, 16, 16)
    assert torch.allclose(drawn, expected, atol=1e-5)


def test_resurrection_fine_tunes_a_copy_on_the_retained_rows_only():
    generator = tiny_generator()
    before = {k: v.clone() for k, v in generator.unet.state_dict().items()}
    images, labels = torch.rand(8, 1, 16, 16) * 2 - 1, torch.tensor([0, 2] * 4)
    tuned = resurrect(generator, None, images, labels, steps=3, lr=1e-3, batch_size=4, seed=0)
    assert all(torch.equal(before[k], v) for k, v in generator.unet.state_dict().items())
    moved = [k for k, v in tuned.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert moved and not any(p.requires_grad for p in tuned.unet.parameters())
    table = tuned.unet.class_embedding.weight
    assert torch.equal(table[1], before["class_embedding.weight"][1])  # a class never shown is never updated
    assert not torch.equal(table[0], before["class_embedding.weight"][0])
    with pytest.raises(ValueError, match="one label per image"):
        resurrect(generator, None, images, labels[:3], steps=1, lr=1e-3, batch_size=4, seed=0)


def test_the_pipeline_audit_scores_each_forgotten_concept_with_the_judge_and_skips_other_kinds():
    from lethe.models.concepts import CONCEPTS
    from lethe.tasks.steps.recovery_audit import audit_recovery
    from tests.conftest import small_settings

    class SaysBag:  # a judge that names every image "bag"
        concepts = list(CONCEPTS)

        def classify(self, images):
            return torch.full((len(images),), CONCEPTS.index("bag"))

    settings = small_settings()
    generator = tiny_generator()
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(3)
    attacker = (torch.rand(len(labels), 1, 16, 16) * 2 - 1, labels)
    found = audit_recovery(generator, None, SaysBag(), ["bag", "coat"], attacker, settings.recovery, settings.sampling)
    assert found == {"bag": 1.0, "coat": 0.0}
    assert audit_recovery(generator, None, SaysBag(), ["bag"], None, settings.recovery, settings.sampling) == {}
    no_coats = (attacker[0][labels != CONCEPTS.index("coat")], labels[labels != CONCEPTS.index("coat")])
    with pytest.raises(ValueError, match="no real images of coat"):
        audit_recovery(generator, None, SaysBag(), ["coat"], no_coats, settings.recovery, settings.sampling)
