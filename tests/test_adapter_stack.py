import pytest
import torch

from models.adapter_stack import AdapterStack
from models.ode_adapter import ODEAdapter, ODEConfig
from tests.conftest import tiny_generator


@pytest.fixture
def generator():
    return tiny_generator()


def inputs(n=3):
    return torch.randn(n, 1, 16, 16), torch.randint(0, 100, (n,)), torch.randint(0, 20, (n,))


def trained_adapter(channels):
    adapter = ODEAdapter(channels, ODEConfig(hidden=4))
    torch.nn.init.normal_(adapter.field.outer.weight, std=0.5)
    return adapter


def test_fresh_stack_leaves_the_network_unchanged(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("mid_block", ODEAdapter(generator.feature_channels("mid_block")))
    adapted, _ = generator.predict_noise(x, t, y, stack)
    assert torch.equal(plain, adapted)


def test_enable_disable_remove_and_intensity(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("mid_block", trained_adapter(generator.feature_channels("mid_block")))
    on, _ = generator.predict_noise(x, t, y, stack)
    assert not torch.allclose(on, plain)
    stack.disable(0)
    assert torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)
    stack.enable(0)
    stack.set_intensity(0, 0.0)
    assert torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)
    stack.set_intensity(0, 1.0)
    assert torch.allclose(generator.predict_noise(x, t, y, stack)[0], on)
    stack.remove(0)
    assert len(stack) == 0 and torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)


def test_hooks_do_not_outlive_the_call(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("mid_block", trained_adapter(generator.feature_channels("mid_block")))
    generator.predict_noise(x, t, y, stack)
    assert torch.equal(generator.unet(x, t, class_labels=y).sample, plain)


def test_trajectories_are_returned_for_recorded_adapters_only(generator):
    x, t, y = inputs()
    stack = AdapterStack()
    stack.add("mid_block", ODEAdapter(generator.feature_channels("mid_block"), ODEConfig(step_size=0.5)))
    stack.add("up_blocks.0", ODEAdapter(generator.feature_channels("up_blocks.0"), ODEConfig(step_size=0.25)))
    _, paths = generator.predict_noise(x, t, y, stack, record=(1,))
    assert list(paths) == [1] and paths[1].shape[0] == 5


def test_trainable_count_and_freeze(generator):
    stack = AdapterStack()
    adapter = ODEAdapter(generator.feature_channels("mid_block"), ODEConfig(hidden=4))
    stack.add("mid_block", adapter)
    assert stack.trainable_parameters() == sum(p.numel() for p in adapter.parameters()) > 0
    stack.freeze()
    assert stack.trainable_parameters() == 0


def test_save_load_round_trip_keeps_outputs_and_hash(generator, tmp_path):
    x, t, y = inputs()
    stack = AdapterStack()
    stack.add("mid_block", trained_adapter(generator.feature_channels("mid_block")), intensity=0.7, label="r1")
    stack.add("up_blocks.0", trained_adapter(generator.feature_channels("up_blocks.0")))
    stack.disable(1)
    loaded = AdapterStack.load(stack.save(tmp_path / "stack"))
    assert loaded.slots == stack.slots
    assert loaded.sha256() == stack.sha256()
    assert torch.equal(generator.predict_noise(x, t, y, loaded)[0], generator.predict_noise(x, t, y, stack)[0])


def test_unknown_target_is_a_clear_error(generator):
    stack = AdapterStack()
    stack.add("no_such_block", ODEAdapter(8))
    with pytest.raises(KeyError, match="no_such_block"):
        generator.predict_noise(*inputs(), stack)
