"""Read the `prepare` stage's tensors and draw class-balanced batches from them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_split(split: str, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [-1, 1] (N, 1, H, W) and concept labels (N,)."""
    path = folder / f"{split}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro prepare` (or `make data`) first")
    tensors = load_file(path)
    return tensors["images"].float() / 127.5 - 1.0, tensors["labels"]


class BalancedBatches:
    """Every concept equally likely per draw, whatever its count (digits have 400 images, clothing 6,000)."""

    def __init__(self, labels: torch.Tensor, seed: int):
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.present = torch.nonzero(self.counts).flatten()  # a label set may skip concepts (retraining)
        self.rng = torch.Generator().manual_seed(seed)

    def draw(self, batch_size: int) -> torch.Tensor:
        classes = self.present[torch.randint(len(self.present), (batch_size,), generator=self.rng)]
        offsets = (torch.rand(batch_size, generator=self.rng) * self.counts[classes]).long()
        return self.order[self.starts[classes] + offsets]
