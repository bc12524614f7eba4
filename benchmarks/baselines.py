"""Baselines for the continual benchmark, trained on the same replay sets and batches as Lethe's adapters.

- `dfr-ft` (Distill-Forget-Repeat): the whole UNet is fine-tuned per request with the same forget and
  retain-distillation losses plus an L2 penalty pulling the weights back to the previous model's.
"""
from __future__ import annotations

import copy
import time

import torch

from models.generator import Generator
from models.losses import noise_matching
from tasks.train_adapter import noised_batch


def train_full_finetune(generator: Generator, forget_images, retain_images, retain_labels, concept: str,
                        anchor: str, params: dict, l2: float = 1e-2, progress=None):
    """A fine-tuned copy of `generator` (the teacher, left untouched); returns (student, trainable, seconds)."""
    train = params["train"]
    torch.manual_seed(train["seed"])
    rng = torch.Generator().manual_seed(train["seed"])
    student = copy.deepcopy(generator)
    student.unet.requires_grad_(True).train()
    start_weights = [p.detach().clone() for p in student.unet.parameters()]
    optimiser = torch.optim.Adam(student.unet.parameters(), lr=train.get("full_lr", 1e-4))
    n_forget = max(1, round(train["batch_size"] * train["forget_fraction"]))
    n_retain = train["batch_size"] - n_forget
    concept_label, anchor_label = generator.labels([concept, anchor])
    start = time.time()
    for step in range(1, train["steps"] + 1):
        xt, t, student_labels, teacher_labels = noised_batch(generator, forget_images, retain_images, retain_labels,
                                                             concept_label, anchor_label, n_forget, n_retain, rng)
        with torch.no_grad():
            teacher_eps, _ = generator.predict_noise(xt, t, teacher_labels)
        student_eps, _ = student.predict_noise(xt, t, student_labels)
        drift = sum((p - p0).pow(2).sum() for p, p0 in zip(student.unet.parameters(), start_weights))
        loss = (train["weights"]["forget"] * noise_matching(student_eps[:n_forget], teacher_eps[:n_forget])
                + train["weights"]["retain"] * noise_matching(student_eps[n_forget:], teacher_eps[n_forget:])
                + l2 * drift)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if progress and (step % 25 == 0 or step == train["steps"]):
            progress(step, train["steps"], {"loss": float(loss.detach())})
    student.unet.eval().requires_grad_(False)
    trainable = sum(p.numel() for p in student.unet.parameters())
    return student, trainable, round(time.time() - start, 1)
