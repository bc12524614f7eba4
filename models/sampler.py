"""Deterministic DDIM sampling for a generator with an optional adapter stack.

The starting noise of concept c under seed s comes from its own random stream (s, c), so a concept's samples
do not depend on which other concepts share the batch: evaluations before and after a step compare the same
noise, and `sample(["trouser"], 16, seed=3)` gives the same images wherever it is asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lethe.models.adapter_stack import AdapterStack

if TYPE_CHECKING:  # the generator imports this module to sample its concepts
    from lethe.models.generator import Generator


def concept_noise(shape: tuple[int, ...], n: int, seed: int, label: int) -> torch.Tensor:
    stream = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(label))
    return torch.randn((n, *shape), generator=stream)


@torch.no_grad()
def ddim_sample(
    generator: Generator,
    labels: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    adapters: AdapterStack | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Run DDIM (eta = 0) from `noise`; returns images in [-1, 1]. guidance > 1 uses the null class (CFG)."""
    scheduler = generator.scheduler
    scheduler.set_timesteps(steps)
    x = noise
    for t in scheduler.timesteps:
        t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
        eps, _ = generator.predict_noise(x, t_batch, labels, adapters)
        if guidance != 1.0:
            null = torch.full_like(labels, generator.null_label)
            eps_null, _ = generator.predict_noise(x, t_batch, null, adapters)
            eps = eps_null + guidance * (eps - eps_null)
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1.0, 1.0)


def sample(
    generator: Generator,
    concepts: list[str],
    n: int,
    seed: int,
    steps: int,
    adapters: AdapterStack | None = None,
    guidance: float = 1.0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
):
    """n images per concept, concept-major: returns (images (len(concepts)*n, C, H, W), labels)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    label_list = generator.labels(concepts)
    noise = torch.cat([concept_noise(generator.image_shape, n, seed, lab) for lab in label_list])
    labels = torch.tensor(label_list).repeat_interleave(n)
    out = []
    for start in range(0, len(noise), batch_size):
        chunk = slice(start, start + batch_size)
        out.append(
            ddim_sample(generator, labels[chunk].to(device), noise[chunk].to(device), steps, adapters, guidance).cpu()
        )
        if progress:
            progress(min(start + batch_size, len(noise)), len(noise))
    return torch.cat(out), labels


def noised(generator, x0: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`x0` noised at uniform timesteps of the generator's scheduler: (x_t, t)."""
    t = torch.randint(0, generator.scheduler.config.num_train_timesteps, (len(x0),), generator=rng)
    return generator.scheduler.add_noise(x0, torch.randn(x0.shape, generator=rng), t), t
