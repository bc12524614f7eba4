import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.ode_adapter import ODEAdapter
from lethe.tasks.settings import SettingsError
from lethe.tasks.steps.train_adapter import new_student, train_adapter
from tests.conftest import ode_config, small_settings, tiny_generator


def run(generator, teacher, settings, name="request-1"):
    forget = torch.rand(6, 1, 16, 16) * 2 - 1
    retain, labels = torch.rand(12, 1, 16, 16) * 2 - 1, torch.randint(2, 20, (12,))
    return train_adapter(
        generator, teacher, forget, retain, labels, "trouser", "dress", settings.adapter, settings.train, name
    )


def test_training_adds_one_named_adapter_and_keeps_everything_else_frozen():
    generator = tiny_generator()
    base_state = {k: v.clone() for k, v in generator.state_dict().items()}
    teacher = AdapterStack()
    old = ODEAdapter(generator.feature_channels("mid_block"), ode_config())
    torch.nn.init.normal_(old.field.outer.weight, std=0.1)
    teacher.add("request-1", {"mid_block": old})
    teacher_hash = teacher.sha256()
    settings = small_settings(adapter__placement="fixed", adapter__targets=["mid_block", "up_blocks.0"])
    result = run(generator, teacher, settings, "request-2")
    assert result.stack.names == ["request-1", "request-2"] and result.name == "request-2"
    assert result.stack.slots["request-2"].targets == ["mid_block", "up_blocks.0"]
    assert result.stack.sha256(["request-1"]) == teacher_hash == teacher.sha256()  # earlier adapters untouched
    assert all(torch.equal(v, base_state[k]) for k, v in generator.state_dict().items())  # base untouched
    # training moved the new adapter away from its identity start: its hash is not that of the same adapter
    # freshly made (same seed, same name and targets, untrained)
    torch.manual_seed(settings.train.seed)
    untrained = new_student(generator, teacher, settings.adapter, "request-2", ["mid_block", "up_blocks.0"])
    assert untrained.sha256(["request-2"]) != result.stack.sha256(["request-2"])
    assert result.trainable_params == sum(p.numel() for p in result.stack.adapters["request-2"].parameters())
    assert result.stack.trainable_parameters() == 0  # frozen once trained
    assert result.stack.slots["request-2"].intensity == settings.adapter.intensity
    assert len(result.history) >= 1 and {"forget", "retain", "smooth", "start"} <= set(result.history[-1])


def test_saliency_placement_puts_the_adapter_on_the_top_k_candidates():
    settings = small_settings(adapter__placement="saliency", adapter__k=2)
    result = run(tiny_generator(), AdapterStack(), settings)
    assert set(result.saliency) == set(settings.adapter.candidates)
    ranked = sorted(result.saliency, key=result.saliency.get, reverse=True)[:2]
    assert sorted(result.targets) == sorted(ranked)
    assert result.stack.slots["request-1"].targets == result.targets


def test_bad_placement_is_refused_when_the_settings_load():
    with pytest.raises(SettingsError, match="adapter.placement"):
        small_settings(adapter__placement="everywhere")


def _rows_through_last_up_block(generator, train):
    """Batch sizes the UNet's last up block saw while `train()` ran."""
    seen = []
    handle = generator.unet.up_blocks[-1].register_forward_hook(lambda m, a, out: seen.append(len(out)))
    try:
        result = train()
    finally:
        handle.remove()
    return seen, result


def test_feature_space_retention_stops_retained_rows_at_the_deepest_new_adapter():
    generator = tiny_generator()
    settings = small_settings(
        adapter__placement="fixed",
        adapter__targets=["mid_block"],
        train__retain_space="features",
        train__steps=3,
        train__batch_size=8,
        train__forget_fraction=0.25,
    )

    def train():
        return run(generator, AdapterStack(), settings)

    rows_seen, result = _rows_through_last_up_block(generator, train)
    # fixed placement, so the last up block ran only in the pool's teacher pass and for forget rows
    assert rows_seen[-3:] == [2, 2, 2]
    assert result.history[-1]["retain"] > 0.0  # the feature term acts once the adapter moves

    settings = settings.override({"train.retain_space": "eps"})
    rows_seen, _ = _rows_through_last_up_block(generator, train)
    assert rows_seen[-3:] == [8, 8, 8]


def test_unknown_retain_space_is_refused_when_the_settings_load():
    with pytest.raises(SettingsError, match="train.retain_space"):
        small_settings(train__retain_space="pixels")


def test_a_diverged_loss_fails_the_training_instead_of_returning_an_adapter():
    generator, settings = tiny_generator(), small_settings()
    forget = torch.full((6, 1, 16, 16), float("nan"))  # a replay set that went bad upstream
    retain, labels = torch.rand(12, 1, 16, 16) * 2 - 1, torch.randint(2, 20, (12,))
    with pytest.raises(FloatingPointError, match="training diverged at step 1 of"):
        train_adapter(
            generator, AdapterStack(), forget, retain, labels, "trouser", "dress", settings.adapter, settings.train, "r"
        )
