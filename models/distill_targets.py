"""A fixed pool of distillation rows: noised replay images with the teacher's noise predictions.

Every method trains on the same pool, drawn by the same seeded batches, so methods differ only in what they
train. The teacher is frozen for the whole step, so its predictions are computed once per row here instead of
once per training step; with `cache_encoder`, the frozen encoder's output for the student's labels is cached
too (see `models.unet_split`), leaving only the decoder to run at each step. Forget rows come first: the
student is asked for the concept and its target is the teacher's prediction for the anchor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.unet_split import Encoded


@dataclass
class DistillTargets:
    xt: torch.Tensor
    t: torch.Tensor
    student_labels: torch.Tensor
    teacher_eps: torch.Tensor
    n_forget: int
    encoded: Encoded | None = None

    def __len__(self) -> int:
        return len(self.xt)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        generator: Generator,
        teacher: AdapterStack | None,
        forget_images: torch.Tensor,
        retain_images: torch.Tensor,
        retain_labels: torch.Tensor,
        concept_label: int,
        anchor_label: int,
        forget_rows: int,
        retain_rows: int,
        seed: int,
        batch_size: int = 256,
        retain_targets: bool = True,
    ) -> "DistillTargets":
        """`forget_rows` + `retain_rows` rows, each a replay image with its own noise and timestep. Without
        `retain_targets` the teacher runs on forget rows only and retained rows' targets are NaN (a trainer
        that distils retained rows on features never reads them; one that does gets a NaN loss, not a
        silent zero)."""
        if forget_rows < 1 or retain_rows < 1:
            raise ValueError(f"the pool needs forget and retain rows, got {forget_rows} and {retain_rows}")
        rng = torch.Generator().manual_seed(seed)
        f_idx = torch.randint(len(forget_images), (forget_rows,), generator=rng)
        r_idx = torch.randint(len(retain_images), (retain_rows,), generator=rng)
        x0 = torch.cat([forget_images[f_idx], retain_images[r_idx]])
        student_labels = torch.cat([torch.full((forget_rows,), concept_label), retain_labels[r_idx]])
        teacher_labels = torch.cat([torch.full((forget_rows,), anchor_label), retain_labels[r_idx]])
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, generator.scheduler.config.num_train_timesteps, (len(x0),), generator=rng)
        xt = generator.scheduler.add_noise(x0, noise, t)
        n = len(xt) if retain_targets else forget_rows
        chunks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        teacher_eps = torch.full_like(xt, float("nan"))
        for c in chunks:
            teacher_eps[c] = generator.predict_noise(xt[c], t[c], teacher_labels[c], teacher)[0]
        return cls(xt, t, student_labels, teacher_eps, forget_rows)

    @torch.no_grad()
    def cache_encoder(self, generator: Generator, frozen: AdapterStack | None, batch_size: int = 256) -> None:
        """Store the encoder's output for the student's labels; valid while every trained module is in the
        decoder and `frozen` holds the adapters the student applies in the encoder."""
        chunks = [slice(i, i + batch_size) for i in range(0, len(self), batch_size)]
        self.encoded = Encoded.cat(
            [generator.encode(self.xt[c], self.t[c], self.student_labels[c], frozen) for c in chunks]
        )

    def draw(self, n_forget: int, n_retain: int, rng: torch.Generator) -> torch.Tensor:
        """Row indices of one batch: `n_forget` forget rows, then `n_retain` retain rows."""
        forget = torch.randint(self.n_forget, (n_forget,), generator=rng)
        retain = self.n_forget + torch.randint(len(self) - self.n_forget, (n_retain,), generator=rng)
        return torch.cat([forget, retain])
