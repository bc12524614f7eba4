import pytest
import torch

from models.adapter_stack import AdapterStack
from models.ode_adapter import ODEAdapter
from tasks.train_adapter import train_adapter
from tests.conftest import small_params, tiny_generator


def test_training_adds_one_adapter_per_target_and_keeps_everything_else_frozen():
    generator = tiny_generator()
    base_state = {k: v.clone() for k, v in generator.state_dict().items()}
    teacher = AdapterStack()
    old = ODEAdapter(generator.feature_channels("mid_block"))
    torch.nn.init.normal_(old.field.outer.weight, std=0.1)
    teacher.add("mid_block", old)
    teacher_hash = teacher.sha256()
    params = small_params()
    params["adapter"].update(placement="fixed", targets=["mid_block", "up_blocks.0"])
    forget = torch.rand(6, 1, 16, 16) * 2 - 1
    retain, labels = torch.rand(12, 1, 16, 16) * 2 - 1, torch.randint(2, 20, (12,))
    result = train_adapter(generator, teacher, forget, retain, labels, "trouser", "dress", params, label="r1")
    assert len(result.stack) == 3 and result.new_indices == [1, 2]
    assert [s.target for s in result.stack.slots] == ["mid_block", "mid_block", "up_blocks.0"]
    assert result.stack.sha256([0]) == teacher_hash == teacher.sha256()  # earlier adapters untouched
    assert all(torch.equal(v, base_state[k]) for k, v in generator.state_dict().items())  # base untouched
    assert result.stack.sha256([1, 2]) != AdapterStack().sha256()
    assert result.trainable_params == sum(p.numel() for i in (1, 2) for p in result.stack.adapters[i].parameters())
    assert result.stack.trainable_parameters() == 0  # frozen once trained
    assert len(result.history) >= 1 and {"forget", "retain", "smooth", "start"} <= set(result.history[-1])


def test_saliency_placement_puts_the_adapters_on_the_top_k_candidates():
    generator = tiny_generator()
    params = small_params()
    params["adapter"].update(placement="saliency", k=2)
    forget = torch.rand(6, 1, 16, 16) * 2 - 1
    retain, labels = torch.rand(12, 1, 16, 16) * 2 - 1, torch.randint(2, 20, (12,))
    result = train_adapter(generator, AdapterStack(), forget, retain, labels, "trouser", "dress", params)
    assert set(result.saliency) == set(params["adapter"]["candidates"])
    ranked = sorted(result.saliency, key=result.saliency.get, reverse=True)[:2]
    assert sorted(result.targets) == sorted(ranked)
    assert [s.target for s in result.stack.slots] == result.targets


def test_bad_placement_is_refused():
    params = small_params()
    params["adapter"]["placement"] = "everywhere"
    x = torch.rand(6, 1, 16, 16)
    with pytest.raises(ValueError, match="placement"):
        train_adapter(tiny_generator(), AdapterStack(), x, x, torch.randint(2, 20, (6,)), "trouser", "dress", params)


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
    params = small_params()
    params["adapter"].update(placement="fixed", targets=["mid_block"])
    params["train"].update(retain_space="features", steps=3, batch_size=8, forget_fraction=0.25)
    forget = torch.rand(6, 1, 16, 16) * 2 - 1
    retain, labels = torch.rand(12, 1, 16, 16) * 2 - 1, torch.randint(2, 20, (12,))

    def train():
        return train_adapter(generator, AdapterStack(), forget, retain, labels, "trouser", "dress", params)

    rows_seen, result = _rows_through_last_up_block(generator, train)
    # fixed placement, so the last up block ran only in the pool's teacher pass and for forget rows
    assert rows_seen[-3:] == [2, 2, 2]
    assert result.history[-1]["retain"] > 0.0  # the feature term acts once the adapter moves

    params["train"]["retain_space"] = "eps"
    rows_seen, _ = _rows_through_last_up_block(generator, train)
    assert rows_seen[-3:] == [8, 8, 8]


def test_unknown_retain_space_is_refused():
    params = small_params()
    params["train"]["retain_space"] = "pixels"
    x = torch.rand(6, 1, 16, 16)
    with pytest.raises(ValueError, match="retain_space"):
        train_adapter(tiny_generator(), AdapterStack(), x, x, torch.randint(2, 20, (6,)), "trouser", "dress", params)
