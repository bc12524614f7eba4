"""Consolidate: the production stack, folded into one adapter of one field per site (`models.consolidation`).

The rows are the stack's own samples of every concept (forgotten ones draw as their anchors), noised at random
timesteps and conditioned on their own concept, so the fit sees the stack where it will be sampled. Either
generator kind: class labels, or (text-to-image) each concept's training prompts in latent space.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from lethe.models.adapter_stack import AdapterStack
from lethe.models.consolidation import Consolidated, fit_consolidated, record_sites
from lethe.models.ode_adapter import ODEConfig
from lethe.models.sampler import sample
from lethe.tasks.settings import AdapterSettings, ConsolidateSettings, SamplingSettings


@dataclass
class ConsolidationResult:
    consolidated: Consolidated
    folded: list[str]  # the adapter names the new one replaces, in stack order
    seconds: float


@torch.no_grad()
def replay_rows(generator, stack: AdapterStack, n: int, seed: int, sampling: SamplingSettings):
    """(clean inputs, conditioning, concept index of each) of about n samples of every concept, drawn with the
    stack (a text-to-image model's in latent space, conditioned on the text features of their prompts)."""
    if generator.kind == "class-conditional":
        images, labels = sample(
            generator, generator.concepts, n, seed, sampling.steps, stack, sampling.guidance, sampling.batch_size
        )
        return images, labels, labels
    owned = [(i, p) for i, c in enumerate(generator.concepts) for p in generator.prompts_of(c)]
    prompts = [p for _, p in owned]
    k = max(1, -(-n * len(generator.concepts) // len(prompts)))  # about n per concept, spread over its prompts
    latents = generator.sample(
        prompts, k, seed, sampling.steps, sampling.guidance, stack, sampling.batch_size, latents=True
    )
    rows = [p for p in prompts for _ in range(k)]
    text = torch.cat([generator.encode_prompts(rows[i : i + 256]) for i in range(0, len(rows), 256)])
    return latents, text, torch.tensor([i for i, _ in owned]).repeat_interleave(k)


def row_indices(concepts: torch.Tensor, forgotten: list[int], rows: int, share: float | None, rng) -> torch.Tensor:
    """Which samples the fit's rows are drawn from: all alike (`share` None), or `share` of the rows from the
    forgotten concepts' samples, where the stack changes the model most and the gates are tightest, and the rest
    from the others'. Where either side has no samples, all alike."""
    chosen = torch.isin(concepts, torch.tensor(forgotten, dtype=concepts.dtype))
    if share is None or chosen.all() or not chosen.any():
        return torch.randint(len(concepts), (rows,), generator=rng)
    pools = [chosen.nonzero().flatten(), (~chosen).nonzero().flatten()]
    counts = [round(rows * share), rows - round(rows * share)]
    return torch.cat([pool[torch.randint(len(pool), (k,), generator=rng)] for pool, k in zip(pools, counts)])


def consolidation_config(adapter: AdapterSettings, consolidate: ConsolidateSettings) -> ODEConfig:
    """The consolidated field's ODE: the request adapters' solver on [0, 1], trained on the grid it runs on."""
    return ODEConfig(adapter.solver, 1.0, 1.0 / consolidate.grid_steps, consolidate.hidden, None, False)


def consolidate(
    generator,
    stack: AdapterStack,
    name: str,
    adapter: AdapterSettings,
    consolidate: ConsolidateSettings,
    sampling: SamplingSettings,
    progress=None,
    forgotten: tuple[str, ...] = (),
) -> ConsolidationResult:
    """Fold every enabled adapter of `stack` into the one adapter `name` (a new one-adapter stack); `forgotten`:
    the concepts the stack forgets (what `consolidate.forgotten_share` draws rows from)."""
    start = time.time()
    folded = [n for n, s in stack.slots.items() if s.enabled and s.intensity > 0]
    if len(folded) < 2:
        raise ValueError(
            f"nothing to consolidate: the stack holds {len(folded)} active adapter(s) ({', '.join(folded) or 'none'}); "
            "consolidation folds two or more"
        )
    generator.requires_grad_(False)
    if unknown := sorted(set(forgotten) - set(generator.concepts)):
        raise ValueError(f"forgotten concept(s) {unknown} are not the generator's; known: {generator.concepts}")
    x0, cond, concepts = replay_rows(generator, stack, consolidate.replay_per_concept, consolidate.seed, sampling)
    rng = torch.Generator().manual_seed(consolidate.seed)
    ids = [generator.concepts.index(c) for c in forgotten]
    idx = row_indices(concepts, ids, consolidate.rows, consolidate.forgotten_share, rng)
    x0, cond = x0[idx], cond[idx]
    t = torch.randint(0, generator.scheduler.config.num_train_timesteps, (len(x0),), generator=rng)
    xt = generator.scheduler.add_noise(x0, torch.randn(x0.shape, generator=rng), t)
    features = record_sites(
        generator.unet,
        stack,
        lambda rows: generator.predict_noise(xt[rows], t[rows], cond[rows], None),
        len(xt),
        sampling.batch_size,
        consolidate.site,
    )
    fitted = fit_consolidated(
        features,
        consolidation_config(adapter, consolidate),
        name,
        consolidate.steps,
        consolidate.batch_size,
        consolidate.lr,
        consolidate.smooth,
        consolidate.seed,
        progress,
    )
    return ConsolidationResult(fitted, folded, round(time.time() - start, 1))


consolidate_task = task(consolidate, name="consolidate-adapters", cache_policy=NO_CACHE)
