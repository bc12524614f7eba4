"""Adversarial forget rows: the recovery attack, run against the student while it trains, becomes training data.

Plain forget rows teach the adapter one thing: asked for the concept's own class embedding, draw the anchor.
The recovery attack (`models.recovery_attack`) asks with a different embedding, one optimised to make the
model denoise the concept's images again, and the features it produces slip past an adapter that has only
seen the concept's own row. So, a few times during training, the student is attacked as it stands (at its
deployed intensity, which is what an attacker meets), and the vector found is kept: later batches add rows
conditioned on it whose target is, as for every forget row, the teacher's prediction for the anchor. Each
round attacks a student that has already learnt to resist the earlier vectors (the AdvUnlearn/RECE idea,
with the attack of the audit itself as the inner maximisation).

The attacker here holds the teacher's replay of the concept (what the step has), not the real images of the
audit; what carries over is measured in BENCHMARKS.md ("Recovery attack").
"""

from __future__ import annotations

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.losses import noise_matching
from lethe.models.recovery_attack import embedding_in_place_of, recover_embedding


class AttackedRows:
    """The vectors found so far, each with a pool of noised concept images and the teacher's anchor targets."""

    def __init__(
        self, generator: Generator, teacher: AdapterStack, images: torch.Tensor, anchor_label: int, pool_rows: int
    ):
        if len(images) == 0:
            raise ValueError("adversarial rows need images of the concept to attack with")
        self.generator, self.teacher, self.images = generator, teacher, images
        self.anchor_label, self.pool_rows = anchor_label, pool_rows
        self.slot = generator.null_label - 1  # the hook gives every row of this label the vector
        self.pools: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.pools)

    def attack(
        self, student: AdapterStack, name: str, intensity: float, steps: int, lr: float, batch_size: int, seed: int
    ) -> float:
        """One round: attack `student` with its adapter `name` at `intensity`, keep the vector and a pool of
        rows for it; returns the attack's final diffusion loss (low: the concept came back)."""
        trained = student.slots[name].intensity
        student.set_intensity(name, intensity)
        try:
            vector, losses = recover_embedding(self.generator, student, self.images, steps, lr, batch_size, seed)
        finally:
            student.set_intensity(name, trained)
        self.pools.append((vector, *self._rows(seed)))
        return losses[-1]

    @torch.no_grad()
    def _rows(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = torch.Generator().manual_seed(seed)
        x0 = self.images[torch.randint(len(self.images), (self.pool_rows,), generator=rng)]
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(self.generator.scheduler.config.num_train_timesteps, (self.pool_rows,), generator=rng)
        device = self.generator.unet.device
        xt = self.generator.scheduler.add_noise(x0, noise, t).to(device)
        t = t.to(device)
        anchor = torch.full((self.pool_rows,), self.anchor_label, device=device)
        target = torch.cat(
            [
                self.generator.predict_noise(xt[i : i + 256], t[i : i + 256], anchor[i : i + 256], self.teacher)[0]
                for i in range(0, self.pool_rows, 256)
            ]
        )
        return xt, t, target

    def loss(self, student: AdapterStack, name: str, intensity: float, n: int, rng: torch.Generator) -> torch.Tensor:
        """Noise matching on `n` rows of one kept vector (drawn at random), the student at its deployed
        `intensity`: asked with the vector, predict what the teacher predicts for the anchor."""
        if not self.pools:
            raise RuntimeError("no attack has run yet: call attack() first")
        vector, xt, t, target = self.pools[int(torch.randint(len(self.pools), (1,), generator=rng))]
        rows = torch.randint(len(xt), (n,), generator=rng).to(xt.device)
        trained = student.slots[name].intensity
        student.set_intensity(name, intensity)
        try:
            with embedding_in_place_of(self.generator, self.slot, vector):
                labels = torch.full((n,), self.slot, device=xt.device)
                eps, _ = self.generator.predict_noise(xt[rows], t[rows], labels, student)
        finally:
            student.set_intensity(name, trained)
        return noise_matching(eps, target[rows])
