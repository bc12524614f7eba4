import torch

from lethe.models.losses import feature_retention, noise_matching, trajectory_smoothness, trajectory_start


def test_trajectory_terms_vanish_on_a_standing_path_and_grow_with_motion():
    h0 = torch.randn(4, 8, 2, 2)
    times = torch.linspace(0, 1, 5)
    still = h0.unsqueeze(0).expand(5, *h0.shape)
    assert trajectory_smoothness(still, times) == 0
    assert trajectory_start(still) == 0
    moving = torch.stack([h0 + k * 0.1 for k in range(5)])
    faster = torch.stack([h0 + k * 0.2 for k in range(5)])
    assert 0 < trajectory_smoothness(moving, times) < trajectory_smoothness(faster, times)
    assert 0 < trajectory_start(moving) < trajectory_start(faster)


def test_smoothness_prefers_a_straight_path_between_the_same_end_points():
    h0, h1 = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    times = torch.linspace(0, 1, 3)
    straight = torch.stack([h0, (h0 + h1) / 2, h1])
    detour = torch.stack([h0, h1 * 2, h1])

    def energy(path):
        return trajectory_smoothness(path + 1.0, times)  # offset keeps |h0| non-zero

    assert energy(straight) < energy(detour)


def test_start_term_only_counts_selected_rows():
    h0 = torch.ones(2, 3, 2, 2)
    path = torch.stack([h0, h0 + torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)])
    assert trajectory_start(path, torch.tensor([0])) == 0
    assert trajectory_start(path, torch.tensor([1])) > 0


def test_noise_matching_does_not_backpropagate_into_the_teacher():
    student = torch.zeros(3, requires_grad=True)
    teacher = torch.ones(3, requires_grad=True)
    noise_matching(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_feature_retention_counts_only_the_end_state_of_the_selected_rows():
    h0 = torch.ones(2, 3, 2, 2)
    shift = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    out_and_back = torch.stack([h0, h0 + shift, h0])  # moves, then returns: the end point is kept
    assert feature_retention(out_and_back) == 0 and trajectory_start(out_and_back) > 0
    away = torch.stack([h0, h0, h0 + shift])
    assert feature_retention(away, torch.tensor([0])) == 0
    assert torch.isclose(feature_retention(away, torch.tensor([1])), torch.tensor(1.0))
