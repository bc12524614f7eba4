"""A fixed pool of distillation rows: noised replay images (or latents) with the teacher's predictions.

Every method trains on the same pool, drawn by the same seeded batches, so methods differ only in what they
train. The teacher is frozen for the whole step, so its predictions are computed once per row here instead of
once per training step; with `cache_encoder`, the frozen encoder's output for the student's labels is cached
too (see `models.unet_split`), leaving only the decoder to run at each step. Forget rows come first: the
student is asked for the concept and its target is the teacher's prediction for the anchor.

The conditioning is whatever the generator's `predict_noise` takes: class labels for the class-conditional
generator, text features for the text-to-image one (`ReplayRows` holds them per replay image, so each forget
image keeps the prompt it was drawn with and is paired with an anchor prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.unet_split import Encoded


@dataclass
class ReplayRows:
    """Replay as the pool reads it: clean inputs and, per input, the student's and the teacher's conditioning."""

    forget_x0: torch.Tensor
    forget_student: torch.Tensor  # what the student is asked for: the concept
    forget_teacher: torch.Tensor  # what the teacher is asked for on the same noisy input: the anchor
    retain_x0: torch.Tensor
    retain_cond: torch.Tensor  # retained rows: both are asked for the same thing

    @classmethod
    def from_labels(
        cls, forget_images, retain_images, retain_labels, concept_label: int, anchor_label: int
    ) -> "ReplayRows":
        n = len(forget_images)
        return cls(
            forget_images, torch.full((n,), concept_label), torch.full((n,), anchor_label), retain_images, retain_labels
        )


@dataclass
class DistillTargets:
    xt: torch.Tensor
    t: torch.Tensor
    student_cond: torch.Tensor
    teacher_eps: torch.Tensor
    n_forget: int
    encoded: Encoded | None = None

    def __len__(self) -> int:
        return len(self.xt)

    @classmethod
    def build(
        cls,
        generator,
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
        """The pool of a class-conditional step (labels as conditioning); see `from_rows`."""
        rows = ReplayRows.from_labels(forget_images, retain_images, retain_labels, concept_label, anchor_label)
        return cls.from_rows(generator, teacher, rows, forget_rows, retain_rows, seed, batch_size, retain_targets)

    @classmethod
    @torch.no_grad()
    def from_rows(
        cls,
        generator,
        teacher: AdapterStack | None,
        rows: ReplayRows,
        forget_rows: int,
        retain_rows: int,
        seed: int,
        batch_size: int = 256,
        retain_targets: bool = True,
    ) -> "DistillTargets":
        """`forget_rows` + `retain_rows` rows, each a replay input with its own noise and timestep. Without
        `retain_targets` the teacher runs on forget rows only and retained rows' targets are NaN (a trainer
        that distils retained rows on features never reads them; one that does gets a NaN loss, not a
        silent zero)."""
        if forget_rows < 1 or retain_rows < 1:
            raise ValueError(f"the pool needs forget and retain rows, got {forget_rows} and {retain_rows}")
        rng = torch.Generator().manual_seed(seed)
        f_idx = torch.randint(len(rows.forget_x0), (forget_rows,), generator=rng)
        r_idx = torch.randint(len(rows.retain_x0), (retain_rows,), generator=rng)
        x0 = torch.cat([rows.forget_x0[f_idx], rows.retain_x0[r_idx]])
        student_cond = torch.cat([rows.forget_student[f_idx], rows.retain_cond[r_idx]])
        teacher_cond = torch.cat([rows.forget_teacher[f_idx], rows.retain_cond[r_idx]])
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, generator.scheduler.config.num_train_timesteps, (len(x0),), generator=rng)
        xt = generator.scheduler.add_noise(x0, noise, t)
        n = len(xt) if retain_targets else forget_rows
        chunks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        teacher_eps = torch.full_like(xt, float("nan"))
        for c in chunks:
            teacher_eps[c] = generator.predict_noise(xt[c], t[c], teacher_cond[c], teacher)[0]
        return cls(xt, t, student_cond, teacher_eps, forget_rows)

    @torch.no_grad()
    def cache_encoder(self, generator, frozen: AdapterStack | None, batch_size: int = 256) -> None:
        """Store the encoder's output for the student's labels; valid while every trained module is in the
        decoder and `frozen` holds the adapters the student applies in the encoder."""
        chunks = [slice(i, i + batch_size) for i in range(0, len(self), batch_size)]
        self.encoded = Encoded.cat(
            [generator.encode(self.xt[c], self.t[c], self.student_cond[c], frozen) for c in chunks]
        )

    def draw(self, n_forget: int, n_retain: int, rng: torch.Generator) -> torch.Tensor:
        """Row indices of one batch: `n_forget` forget rows, then `n_retain` retain rows."""
        forget = torch.randint(self.n_forget, (n_forget,), generator=rng)
        retain = self.n_forget + torch.randint(len(self) - self.n_forget, (n_retain,), generator=rng)
        return torch.cat([forget, retain])
