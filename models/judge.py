"""The judge: a small CNN that names the concept in an image, and whose penultimate layer is the
feature extractor for KID/FID (the Inception weights those metrics default to cannot be downloaded here).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "judge.json"
WEIGHTS_NAME = "judge.safetensors"


class Judge(nn.Module):
    def __init__(
        self, concepts: list[str], image_size: int = 16, channels: int = 1, width: int = 32, features: int = 128
    ):
        super().__init__()
        self.concepts = list(concepts)
        self.config = {
            "concepts": self.concepts,
            "image_size": image_size,
            "channels": channels,
            "width": width,
            "features": features,
        }
        self.num_features = features  # torchmetrics reads this from a custom feature extractor
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * width * (image_size // 4) ** 2, features),
            nn.ReLU(),
        )
        self.head = nn.Linear(features, len(concepts))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the concepts for images in [-1, 1]."""
        return self.head(self.body(x))

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.cat(
            [self(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        )

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Judge":
        folder = Path(folder)
        judge = cls(**json.loads((folder / CONFIG_NAME).read_text()))
        judge.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return judge.eval().requires_grad_(False)


class JudgeFeatures(nn.Module):
    """The judge's penultimate layer as a torchmetrics feature extractor (images in [-1, 1])."""

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge = judge
        self.num_features = judge.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.judge.features(x.float())
