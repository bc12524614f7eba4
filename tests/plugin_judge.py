"""A plug-in judge as a user would write one: a torch module with `concepts` and logits, nothing of Lethe's."""

from __future__ import annotations

import torch
from torch import nn

CONCEPTS = ["trouser", "dress", "bag", "digit_3"]


class TinyClassifier(nn.Module):
    def __init__(self, concepts: list[str]):
        super().__init__()
        self.concepts = list(concepts)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def tiny_judge() -> TinyClassifier:
    torch.manual_seed(5)
    return TinyClassifier(CONCEPTS)


def wrong_output() -> nn.Module:
    """A judge whose logits do not match its concepts (three names, four outputs)."""
    torch.manual_seed(5)
    return TinyClassifier(CONCEPTS[:3])
