"""Losses of one unlearning step.

- forget: the student, asked for the forgotten concept, predicts the noise the teacher predicts for the anchor;
- retain: the student matches the teacher on replayed retained concepts (self-distillation), either on the
  noise prediction or on the features the new adapter rewrites (`feature_retention`): below the adapter the
  student is the teacher, so h_0 is the teacher's feature and h_T = h_0 makes every later layer agree;
- trajectory consistency, on the ODE path of the adapter being trained:
  * smoothness: kinetic energy sum_k |h_{k+1} - h_k|^2 / dt_k over the solver grid (a short, straight path);
  * start: retained inputs keep every state near h_0, not only the end point.
Feature-space terms are divided by the energy of h_0 so their weights do not depend on the layer's scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_matching(student_eps: torch.Tensor, teacher_eps: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the teacher's (detached) noise prediction: used for forget and retain alike."""
    return F.mse_loss(student_eps, teacher_eps.detach())


def _energy(h0: torch.Tensor) -> torch.Tensor:
    return h0.detach().pow(2).mean().clamp_min(1e-8)


def trajectory_smoothness(states: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Kinetic energy of the discrete path: sum over grid steps of mean |dh|^2 / dt, relative to |h_0|^2."""
    if len(states) < 2:
        return states.new_zeros(())
    dt = (times[1:] - times[:-1]).to(states)
    step_energy = (states[1:] - states[:-1]).pow(2).flatten(1).mean(1)
    return (step_energy / dt.clamp_min(1e-8)).sum() / _energy(states[0])


def feature_retention(states: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |h_T - h_0|^2 of the end state for the selected batch rows, relative to |h_0|^2."""
    if rows is not None:
        states = states[:, rows]
    if states.shape[1] == 0:
        return states.new_zeros(())
    return (states[-1] - states[0]).pow(2).mean() / _energy(states[0])


def trajectory_start(states: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over every grid state of |h_k - h_0|^2 for the selected batch rows, relative to |h_0|^2."""
    if rows is not None:
        states = states[:, rows]
    if states.shape[1] == 0:
        return states.new_zeros(())
    drift = (states[1:] - states[:1]).pow(2).mean()
    return drift / _energy(states[0])
