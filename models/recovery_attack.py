"""A white-box recovery attack on a class-conditional generator: can a forgotten concept be brought back?

The attacker holds the production model (UNet, scheduler, adapter stack, all frozen) and real images of the
concept, but no label that still works. It optimises one free vector in the class-embedding space (the
counterpart of textual inversion for a model conditioned on a class embedding) with the diffusion loss on those
images, then samples with that vector. If the samples are judged to be the concept again, the forgetting yields
to the attack. Run on the base model, the same attack must succeed, otherwise it is too weak to mean anything.

`recover_embedding` starts from the mean of the concept embeddings (not from the concept's own row, which the
attacker of a real system would not know is special) and takes `steps` Adam steps of `batch_size` noised images
each: that is the attack's budget. `sample_with_embedding` draws DDIM samples with the vector in place of the
concept's embedding (the null class, for guidance, is left alone).

`resurrect` is the other way back: a short fine-tune of every UNet weight, adapters attached and frozen, on
retained images only. A concept that returns after it was never shown was only hidden.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.sampler import concept_noise, ddim_sample


@contextmanager
def embedding_in_place_of(generator: Generator, label: int, vector: torch.Tensor):
    """While open, every row conditioned on `label` gets `vector` as its class embedding (a forward hook on
    the UNet's class-embedding table; gradients flow into `vector`)."""
    table = generator.unet.class_embedding
    if not isinstance(table, torch.nn.Embedding):
        raise ValueError("the recovery attack needs a UNet conditioned on a class-embedding table")
    if vector.shape != (table.embedding_dim,):
        raise ValueError(f"the vector must have shape ({table.embedding_dim},), got {tuple(vector.shape)}")

    def replace(module, args, output):
        rows = (args[0] == label).unsqueeze(-1)
        return torch.where(rows, vector.to(output.dtype).expand_as(output), output)

    handle = table.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def recover_embedding(
    generator: Generator,
    adapters: AdapterStack | None,
    images: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise a class-embedding vector so that the frozen model denoises `images` (real images of the
    concept, in [-1, 1]) as if conditioned on it; returns the vector and the loss of every step."""
    if steps < 1 or batch_size < 1 or len(images) == 0:
        raise ValueError("the attack needs steps >= 1, batch_size >= 1 and at least one image")
    table = generator.unet.class_embedding.weight
    label = generator.null_label - 1  # any concept's slot: the hook replaces it, the table is not read
    vector = table[: generator.null_label].detach().mean(0).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([vector], lr=lr)
    rng = torch.Generator().manual_seed(seed)
    train_steps = generator.scheduler.config.num_train_timesteps
    device = table.device
    losses = []
    with embedding_in_place_of(generator, label, vector):
        for _ in range(steps):
            rows = torch.randint(len(images), (batch_size,), generator=rng)
            x0 = images[rows].to(device)
            noise = torch.randn(x0.shape, generator=rng).to(device)
            t = torch.randint(train_steps, (batch_size,), generator=rng).to(device)
            xt = generator.scheduler.add_noise(x0, noise, t)
            labels = torch.full((batch_size,), label, device=device)
            eps, _ = generator.predict_noise(xt, t, labels, adapters)
            loss = F.mse_loss(eps, noise)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    return vector.detach(), losses


@torch.no_grad()
def sample_with_embedding(
    generator: Generator,
    adapters: AdapterStack | None,
    vector: torch.Tensor,
    n: int,
    seed: int,
    steps: int,
    guidance: float = 1.0,
    batch_size: int = 256,
) -> torch.Tensor:
    """n DDIM samples conditioned on `vector` instead of a concept's embedding, in [-1, 1]."""
    label = generator.null_label - 1
    noise = concept_noise(generator.image_shape, n, seed, label)
    device = generator.unet.device
    out = []
    with embedding_in_place_of(generator, label, vector.to(device)):
        for start in range(0, n, batch_size):
            chunk = noise[start : start + batch_size].to(device)
            labels = torch.full((len(chunk),), label, device=device)
            out.append(ddim_sample(generator, labels, chunk, steps, adapters, guidance).cpu())
    return torch.cat(out)


def resurrect(
    generator: Generator,
    adapters: AdapterStack | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> Generator:
    """A copy of `generator` fine-tuned for `steps` Adam steps with the diffusion loss on `images` (retained
    concepts only, with their `labels`) under the frozen adapter stack; the original is left untouched."""
    if steps < 1 or batch_size < 1 or len(images) == 0 or len(images) != len(labels):
        raise ValueError("resurrection needs steps >= 1, batch_size >= 1 and one label per image")
    tuned = copy.deepcopy(generator)
    tuned.unet.requires_grad_(True).train()
    optimiser = torch.optim.Adam(tuned.unet.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    train_steps = tuned.scheduler.config.num_train_timesteps
    device = tuned.unet.device
    for _ in range(steps):
        rows = torch.randint(len(images), (batch_size,), generator=rng)
        x0, y = images[rows].to(device), labels[rows].to(device)
        noise = torch.randn(x0.shape, generator=rng).to(device)
        t = torch.randint(train_steps, (batch_size,), generator=rng).to(device)
        eps, _ = tuned.predict_noise(tuned.scheduler.add_noise(x0, noise, t), t, y, adapters)
        loss = F.mse_loss(eps, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return tuned.eval().requires_grad_(False)
