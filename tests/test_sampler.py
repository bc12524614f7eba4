import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.ode_adapter import ODEAdapter
from lethe.models.sampler import sample
from tests.conftest import ode_config, tiny_generator


def test_same_seed_same_images_and_concepts_do_not_depend_on_the_batch():
    generator = tiny_generator()
    a, labels = sample(generator, ["trouser", "digit_3"], 3, seed=5, steps=3)
    b, _ = sample(generator, ["trouser", "digit_3"], 3, seed=5, steps=3)
    alone, _ = sample(generator, ["digit_3"], 3, seed=5, steps=3, batch_size=2)
    assert torch.equal(a, b)
    assert labels.tolist() == [1, 1, 1, 13, 13, 13]
    assert torch.allclose(a[3:], alone, atol=1e-5)
    other, _ = sample(generator, ["trouser"], 3, seed=6, steps=3)
    assert not torch.allclose(a[:3], other)
    assert a.min() >= -1 and a.max() <= 1 and a.shape == (6, 1, 16, 16)


def test_identity_adapters_do_not_change_samples():
    generator = tiny_generator()
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": ODEAdapter(generator.feature_channels("mid_block"), ode_config())})
    plain, _ = sample(generator, ["bag"], 2, seed=0, steps=3)
    adapted, _ = sample(generator, ["bag"], 2, seed=0, steps=3, adapters=stack)
    assert torch.equal(plain, adapted)
