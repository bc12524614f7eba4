"""A Neural-ODE adapter: dh/dt = f(t, h), integrated on a fixed grid with torchdiffeq (LEGATO).

The feature map h of a frozen UNet block flows along a learned vector field for a horizon T. The field's
last layer starts at zero, so a fresh adapter is exactly the identity; the horizon is the knob of forgetting
intensity: integrating for `intensity * T` moves a feature part of the way, 0 leaves it untouched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchdiffeq import odeint

FIXED_GRID_SOLVERS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


@dataclass(frozen=True)
class ODEConfig:
    """How an adapter integrates: solver name, horizon T and step size (number of steps = ceil(T / step)).
    No defaults: the values come from the `adapter` settings (or a saved stack's config).

    `sampling_steps`, when set, is the grid of the deployed adapter (outside training): a trajectory kept
    straight by the smoothness term is integrated almost exactly by fewer steps, and every step costs a pass
    of the field at each denoising step.
    """

    solver: str
    horizon: float
    step_size: float
    hidden: int
    sampling_steps: int | None
    time_dependent: bool = False  # the field sees t (an extra input channel); stacks saved before it: False

    def __post_init__(self):
        if self.solver not in FIXED_GRID_SOLVERS:
            raise ValueError(f"solver {self.solver!r} is not a fixed-grid torchdiffeq solver: {FIXED_GRID_SOLVERS}")
        if self.horizon <= 0 or self.step_size <= 0:
            raise ValueError(f"horizon and step_size must be positive, got {self.horizon}, {self.step_size}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1 or None, got {self.sampling_steps}")

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.horizon / self.step_size - 1e-9))

    def to_dict(self) -> dict:
        return asdict(self)


class VectorField(nn.Module):
    """f(t, h): a small conv net on the feature map; its output layer is zero-initialised. An autonomous
    field ignores t; a time-dependent one reads t / T as one more input channel (`time_dependent`)."""

    def __init__(self, channels: int, hidden: int, time_dependent: bool = False, horizon: float = 1.0):
        super().__init__()
        self.time_dependent, self.horizon = time_dependent, horizon
        self.norm = nn.GroupNorm(math.gcd(8, channels), channels)
        self.inner = nn.Conv2d(channels + int(time_dependent), hidden, 3, padding=1)
        self.outer = nn.Conv2d(hidden, channels, 3, padding=1)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.norm(h))
        if self.time_dependent:
            x = torch.cat([x, (t / self.horizon).to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])], dim=1)
        return self.outer(nn.functional.silu(self.inner(x)))


def euler_path(field, h: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """torchdiffeq's fixed-grid Euler step for step, h_{k+1} = h_k + (t_{k+1} - t_k) f(t_k, h_k), without its
    per-call set-up: the same bits as `odeint(..., method="euler")` (tests/test_ode_adapter.py). Used where no
    gradient is recorded (sampling, evaluation), where an adapter runs once per denoising step on a small map and
    torchdiffeq's set-up is a large share of the call."""
    states = [h]
    for t0, t1 in zip(times[:-1], times[1:]):
        states.append(states[-1] + (t1 - t0) * field(t0, states[-1]))
    return torch.stack(states)


class ODEAdapter(nn.Module):
    """Integrates a feature map along its vector field; returns every state on the grid."""

    def __init__(self, channels: int, config: ODEConfig):
        super().__init__()
        self.channels = channels
        self.config = config
        self.field = VectorField(channels, config.hidden, config.time_dependent, config.horizon)

    def grid(self, intensity: float = 1.0, steps: int | None = None) -> torch.Tensor:
        """Times 0 = t_0 < ... < t_n = intensity * T, n = the config's number of steps unless given."""
        n = steps or self.config.steps
        return torch.linspace(0.0, intensity * self.config.horizon, n + 1)

    def trajectory(
        self, h: torch.Tensor, intensity: float = 1.0, solver: str | None = None, steps: int | None = None
    ) -> torch.Tensor:
        """States of the ODE path, shape (n + 1, *h.shape); state 0 is h itself.

        `solver` and `steps` override the training-time integration (e.g. a cheaper euler pass at sampling).
        """
        if not 0.0 <= intensity:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        times = self.grid(intensity, steps).to(h.device, h.dtype)
        h = h.contiguous()  # torch 2.13 CPU: GroupNorm backward on a strided view can segfault
        if intensity == 0.0:
            return h.unsqueeze(0).expand(len(times), *h.shape)
        if (solver or self.config.solver) == "euler" and not self._builds_graph(h):
            return euler_path(self.field, h, times)
        return odeint(self.field, h, times, method=solver or self.config.solver)

    def _builds_graph(self, h: torch.Tensor) -> bool:
        """Whether autograd records this pass (training): torchdiffeq's own loop then, so gradients keep the
        exact summation order they were trained and tuned with."""
        return torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, h: torch.Tensor, intensity: float = 1.0) -> torch.Tensor:
        """The end state on the deployment grid (`sampling_steps`, else the training grid)."""
        if intensity == 0.0:
            return h
        return self.trajectory(h, intensity, steps=self.config.sampling_steps)[-1]
