import json

import pytest
import torch
from safetensors.torch import save_file

from lethe.models.adapter_stack import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, AdapterStack
from lethe.models.ode_adapter import ODEAdapter
from tests.conftest import ode_config, tiny_generator


@pytest.fixture
def generator():
    return tiny_generator()


def inputs(n=3):
    return torch.randn(n, 1, 16, 16), torch.randint(0, 100, (n,)), torch.randint(0, 20, (n,))


def fresh(channels, **config):
    return ODEAdapter(channels, ode_config(**config))


def trained(channels, **config):
    adapter = fresh(channels, **config)
    torch.nn.init.normal_(adapter.field.outer.weight, std=0.5)
    return adapter


def test_fresh_stack_leaves_the_network_unchanged(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": fresh(generator.feature_channels("mid_block"))})
    adapted, _ = generator.predict_noise(x, t, y, stack)
    assert torch.equal(plain, adapted)


def test_enable_disable_remove_and_intensity_by_name(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": trained(generator.feature_channels("mid_block"))})
    on, _ = generator.predict_noise(x, t, y, stack)
    assert not torch.allclose(on, plain)
    stack.disable("request-1")
    assert torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)
    stack.enable("request-1")
    stack.set_intensity("request-1", 0.0)
    assert torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)
    stack.set_intensity("request-1", 1.0)
    assert torch.allclose(generator.predict_noise(x, t, y, stack)[0], on)
    stack.remove("request-1")
    assert len(stack) == 0 and torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)
    with pytest.raises(KeyError, match="no adapter named 'request-1'"):
        stack.enable("request-1")


def test_add_takes_the_enabled_flag_and_refuses_clashing_or_bad_names(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": trained(generator.feature_channels("mid_block"))}, enabled=False)
    assert stack.slots["request-1"].enabled is False
    assert torch.equal(generator.predict_noise(x, t, y, stack)[0], plain)
    with pytest.raises(ValueError, match="already holds an adapter named 'request-1'"):
        stack.add("request-1", {"up_blocks.0": fresh(generator.feature_channels("up_blocks.0"))})
    for bad in ("", "has.dot", "has space", "../up"):
        with pytest.raises(ValueError, match="adapter name"):
            stack.add(bad, {"mid_block": fresh(generator.feature_channels("mid_block"))})


def test_removing_one_adapter_never_renames_or_changes_the_others(generator):
    x, t, y = inputs()
    stack = AdapterStack()
    for i in (1, 2, 3):
        stack.add(f"request-{i}", {"mid_block": trained(generator.feature_channels("mid_block"))})
    hashes = {n: stack.sha256([n]) for n in stack.names}
    stack.remove("request-2")
    assert stack.names == ["request-1", "request-3"]
    assert {n: stack.sha256([n]) for n in stack.names} == {n: hashes[n] for n in ("request-1", "request-3")}
    only = AdapterStack()
    for n in ("request-1", "request-3"):
        only.add(n, {"mid_block": stack.field(n, "mid_block")})
    assert torch.equal(generator.predict_noise(x, t, y, stack)[0], generator.predict_noise(x, t, y, only)[0])


def test_hooks_do_not_outlive_the_call(generator):
    x, t, y = inputs()
    plain, _ = generator.predict_noise(x, t, y)
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": trained(generator.feature_channels("mid_block"))})
    generator.predict_noise(x, t, y, stack)
    assert torch.equal(generator.unet(x, t, class_labels=y).sample, plain)


def test_trajectories_are_returned_for_recorded_adapters_only(generator):
    x, t, y = inputs()
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": fresh(generator.feature_channels("mid_block"), step_size=0.5)})
    stack.add(
        "request-2",
        {
            "up_blocks.0": fresh(generator.feature_channels("up_blocks.0"), step_size=0.25),
            "mid_block": fresh(generator.feature_channels("mid_block"), step_size=0.25),
        },
    )
    _, paths = generator.predict_noise(x, t, y, stack, record=("request-2",))
    assert sorted(paths) == [("request-2", "mid_block"), ("request-2", "up_blocks.0")]
    assert all(p.shape[0] == 5 for p in paths.values())
    with pytest.raises(KeyError, match="unknown adapters"):
        generator.predict_noise(x, t, y, stack, record=("request-9",))


def test_trainable_count_and_freeze(generator):
    stack = AdapterStack()
    adapter = fresh(generator.feature_channels("mid_block"))
    stack.add("request-1", {"mid_block": adapter})
    assert stack.trainable_parameters() == sum(p.numel() for p in adapter.parameters()) > 0
    stack.freeze()
    assert stack.trainable_parameters() == 0


def test_hash_follows_the_weights_and_the_names(generator):
    channels = generator.feature_channels("mid_block")
    torch.manual_seed(1)
    a = AdapterStack()
    a.add("request-1", {"mid_block": trained(channels)})
    torch.manual_seed(1)
    b = AdapterStack()
    b.add("request-1", {"mid_block": trained(channels)})
    assert a.sha256() == b.sha256()  # same names, targets and weights
    with torch.no_grad():
        b.field("request-1", "mid_block").field.outer.weight[0, 0, 0, 0] += 1e-3
    assert a.sha256() != b.sha256()  # one weight moved
    torch.manual_seed(1)
    c = AdapterStack()
    c.add("request-2", {"mid_block": trained(channels)})
    assert c.sha256() != a.sha256()  # same weights under another name
    with pytest.raises(ValueError, match="no adapters"):
        a.sha256([])


def test_save_load_round_trip_keeps_outputs_hash_and_format_version(generator, tmp_path):
    x, t, y = inputs()
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": trained(generator.feature_channels("mid_block"))}, intensity=0.7)
    stack.add("request-2", {"up_blocks.0": trained(generator.feature_channels("up_blocks.0"))}, enabled=False)
    folder = stack.save(tmp_path / "stack")
    assert json.loads((folder / CONFIG_NAME).read_text())["format"] == FORMAT_VERSION
    loaded = AdapterStack.load(folder)
    assert loaded.slots == stack.slots and loaded.names == ["request-1", "request-2"]
    assert loaded.sha256() == stack.sha256()
    assert torch.equal(generator.predict_noise(x, t, y, loaded)[0], generator.predict_noise(x, t, y, stack)[0])


def test_format_1_stacks_load_with_their_labels_as_names(generator, tmp_path):
    """Stacks saved before names (index-addressed, one entry per module) still load, and compute the same."""
    x, t, y = inputs()
    first, second = trained(generator.feature_channels("mid_block")), trained(generator.feature_channels("up_blocks.0"))
    third = trained(generator.feature_channels("mid_block"))
    entries = [
        ("mid_block", first, "request-1:trouser->dress"),
        ("up_blocks.0", second, "request-1:trouser->dress"),
        ("mid_block", third, "request-2:bag->coat"),
    ]
    folder = tmp_path / "v1"
    folder.mkdir()
    config = [
        {
            "target": target,
            "intensity": 1.5,
            "enabled": True,
            "label": label,
            "channels": a.channels,
            "ode": a.config.to_dict(),
        }
        for target, a, label in entries
    ]
    (folder / CONFIG_NAME).write_text(json.dumps({"adapters": config}))
    save_file(
        {f"adapters.{i}.{k}": v for i, (_, a, _) in enumerate(entries) for k, v in a.state_dict().items()},
        folder / WEIGHTS_NAME,
    )
    loaded = AdapterStack.load(folder)
    assert loaded.names == ["request-1-trouser-dress", "request-2-bag-coat"]
    assert loaded.slots["request-1-trouser-dress"].targets == ["mid_block", "up_blocks.0"]
    expected = AdapterStack()
    expected.add("one", {"mid_block": first, "up_blocks.0": second}, 1.5)
    expected.add("two", {"mid_block": third}, 1.5)
    assert torch.equal(generator.predict_noise(x, t, y, loaded)[0], generator.predict_noise(x, t, y, expected)[0])


def test_unknown_target_is_a_clear_error(generator):
    stack = AdapterStack()
    stack.add("request-1", {"no_such_block": fresh(8)})
    with pytest.raises(KeyError, match="no_such_block"):
        generator.predict_noise(*inputs(), stack)
