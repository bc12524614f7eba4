"""A user's own classifier as Lethe's judge: any torch module that names concepts in decoded images.

The contract is small: `concepts` (the names it outputs, in order) and `forward(images in [-1, 1]) ->
logits over them`. `features(images)` with `num_features` is optional: KID measures on it when present, and
on the logits otherwise. The shipped `models.judge.Judge` fulfils the whole contract itself.
"""

from __future__ import annotations

import torch
from torch import nn


class PluginJudge(nn.Module):
    """Wraps a plug-in classifier so evaluation reads it exactly as the shipped judge."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        concepts = getattr(classifier, "concepts", None)
        if not isinstance(classifier, nn.Module) or not callable(classifier):
            raise TypeError(f"a judge must be a torch.nn.Module, got {type(classifier).__name__}")
        if not concepts or not all(isinstance(c, str) for c in concepts):
            raise TypeError("a judge must have `concepts`: the list of concept names its logits are over")
        self.classifier = classifier.eval().requires_grad_(False)
        self.concepts = list(concepts)
        has_features = callable(getattr(classifier, "features", None)) and hasattr(classifier, "num_features")
        self.num_features = int(classifier.num_features) if has_features else len(self.concepts)
        self._features = classifier.features if has_features else classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x)
        if logits.ndim != 2 or logits.shape[1] != len(self.concepts):
            raise ValueError(
                f"the judge returned logits of shape {tuple(logits.shape)}; expected (N, {len(self.concepts)})"
            )
        return logits

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        device = next(self.parameters(), torch.empty(0)).device
        return torch.cat(
            [self(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        )
