import pytest
import torch

from lethe.models.ode_adapter import ODEAdapter, ODEConfig, euler_path
from tests.conftest import ode_config


def test_new_adapter_is_exactly_the_identity():
    adapter = ODEAdapter(16, ode_config(hidden=4))
    h = torch.randn(3, 16, 4, 4)
    assert torch.equal(adapter(h), h)


def test_intensity_zero_is_the_identity_even_after_training():
    adapter = ODEAdapter(16, ode_config(solver="rk4", hidden=8, sampling_steps=None))
    torch.nn.init.normal_(adapter.field.outer.weight)
    h = torch.randn(2, 16, 4, 4)
    assert not torch.allclose(adapter(h), h)
    assert torch.equal(adapter(h, intensity=0.0), h)


@pytest.mark.parametrize("horizon,step,states", [(1.0, 0.25, 5), (1.0, 0.5, 3), (2.0, 0.5, 5), (1.0, 0.3, 5)])
def test_trajectory_has_one_state_per_grid_point(horizon, step, states):
    adapter = ODEAdapter(8, ode_config(horizon=horizon, step_size=step))
    h = torch.randn(2, 8, 4, 4)
    path = adapter.trajectory(h)
    assert path.shape == (states, *h.shape)
    assert len(adapter.grid()) == states
    assert torch.equal(path[0], h)


def test_intensity_scales_the_horizon_not_the_number_of_states():
    adapter = ODEAdapter(8, ode_config(horizon=2.0, step_size=0.5))
    assert adapter.grid(0.5).tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_trained_field_moves_features_monotonically_with_intensity():
    adapter = ODEAdapter(8, ode_config(solver="rk4", sampling_steps=None))
    torch.nn.init.constant_(adapter.field.outer.bias, 1.0)  # constant field: h(T) = h + s * T
    h = torch.zeros(1, 8, 2, 2)
    assert adapter(h, 0.5).mean().item() == pytest.approx(0.5, abs=1e-5)
    assert adapter(h, 1.0).mean().item() == pytest.approx(1.0, abs=1e-5)


def test_deployed_adapter_integrates_on_the_sampling_grid_and_training_sees_the_fine_grid():
    config = ode_config(solver="euler", horizon=1.0, step_size=0.25, sampling_steps=1)
    adapter = ODEAdapter(8, config)
    torch.nn.init.normal_(adapter.field.outer.weight, std=0.5)
    h = torch.randn(2, 8, 4, 4)
    assert torch.equal(adapter(h), adapter.trajectory(h, steps=1)[-1])
    assert adapter.trajectory(h).shape[0] == 5  # training records the 4-step path
    assert not torch.allclose(adapter(h), adapter.trajectory(h)[-1])  # a curved field: the grids differ
    torch.nn.init.zeros_(adapter.field.outer.weight)
    torch.nn.init.constant_(adapter.field.outer.bias, 0.7)  # a straight path: one step is exact
    assert torch.allclose(adapter(h, 1.5), adapter.trajectory(h, 1.5)[-1], atol=1e-6)


@pytest.mark.parametrize(
    "bad", [dict(solver="dopri5"), dict(horizon=0), dict(step_size=-1), dict(hidden=0), dict(sampling_steps=0)]
)
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        ode_config(**bad)


def test_the_config_has_no_defaults_of_its_own():
    """Every value comes from the settings (or a saved stack), so no code default can contradict the file."""
    with pytest.raises(TypeError):
        ODEConfig()


def test_a_time_dependent_field_starts_as_the_identity_and_reads_t(tmp_path):
    from lethe.models.adapter_stack import AdapterStack

    adapter = ODEAdapter(8, ode_config(time_dependent=True, hidden=4))
    h = torch.randn(2, 8, 4, 4)
    assert torch.equal(adapter(h), h)  # zero-initialised output layer, as for the autonomous field
    torch.manual_seed(0)
    with torch.no_grad():
        adapter.field.outer.weight.normal_(0, 0.1)
        adapter.field.inner.weight[:, -1].fill_(1.0)  # the t channel
    at_0, at_1 = adapter.field(torch.tensor(0.0), h), adapter.field(torch.tensor(1.0), h)
    assert not torch.allclose(at_0, at_1)
    autonomous = ODEAdapter(8, ode_config(hidden=4))
    assert autonomous.field.inner.in_channels == 8 and adapter.field.inner.in_channels == 9
    # saved and loaded with its config; a stack saved before the option existed loads as autonomous
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": adapter})
    loaded = AdapterStack.load(stack.save(tmp_path / "stack"))
    assert loaded.field("request-1", "mid_block").config.time_dependent
    assert torch.equal(loaded.field("request-1", "mid_block")(h), adapter(h))
    legacy = ode_config().to_dict()
    del legacy["time_dependent"]
    assert ODEConfig(**legacy).time_dependent is False


@pytest.mark.parametrize("time_dependent", [False, True])
@pytest.mark.parametrize("steps, intensity", [(1, 2.0), (4, 1.0), (4, 1.5)])
def test_without_gradients_the_euler_path_is_torchdiffeqs_bit_for_bit(steps, intensity, time_dependent, monkeypatch):
    from torchdiffeq import odeint

    import lethe.models.ode_adapter as ode_adapter

    torch.manual_seed(0)
    adapter = ODEAdapter(16, ode_config(step_size=1.0 / steps, hidden=8, time_dependent=time_dependent))
    torch.nn.init.normal_(adapter.field.outer.weight, std=0.3)
    h = torch.randn(3, 16, 8, 8)
    calls = []
    monkeypatch.setattr(ode_adapter, "euler_path", lambda *a: calls.append(1) or euler_path(*a))
    with torch.no_grad():
        ours = adapter.trajectory(h, intensity)
        theirs = odeint(adapter.field, h, adapter.grid(intensity), method="euler")
    assert calls and ours.shape == theirs.shape == (steps + 1, 3, 16, 8, 8)
    assert torch.equal(ours, theirs)
    # training (a graph is recorded) keeps torchdiffeq's loop and its gradients exactly
    calls.clear()
    trained = adapter.trajectory(h.requires_grad_(), intensity)
    assert not calls and torch.equal(trained, theirs) and trained.grad_fn is not None
