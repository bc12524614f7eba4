"""Consolidate: the production stack, folded into one adapter of one field per site (`models.consolidation`).

The rows are the stack's own samples of every concept (forgotten ones draw as their anchors), noised at random
timesteps and conditioned on their own concept, so the fit sees the stack where it will be sampled. Either
generator kind: class labels, or (text-to-image) each concept's training prompts in latent space.

With `consolidate.attack_rounds`, the fold is fitted against the recovery attack (`models.consolidation`): after
each phase the attack (the audit's, with `recovery`'s budget) runs against the fold on every forgotten concept,
holding the plain generator's samples of it (never the audit's real images, so the gate still measures what the
fit did not see), and `consolidate.attack_rows` noised rows conditioned on the vector found join the fit, with the
stack's site features there as targets: what the unfolded stack does when an attacker asks that way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from lethe.models.adapter_stack import AdapterStack
from lethe.models.consolidation import Consolidated, SiteFeatures, fit_consolidated, record_sites
from lethe.models.ode_adapter import ODEConfig
from lethe.models.recovery_attack import (
    embedding_in_place_of,
    recover_embedding,
    recover_token_embedding,
    token_embedding_features,
)
from lethe.models.sampler import noised, sample
from lethe.tasks.settings import AdapterSettings, ConsolidateSettings, RecoverySettings, SamplingSettings


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


@torch.no_grad()
def concept_samples(generator, concept: str, n: int, seed: int, sampling: SamplingSettings) -> torch.Tensor:
    """`n` samples of `concept` from the plain generator (no adapters: the concept as it was), in latent
    space for a text-to-image model: what the fold's attacker holds."""
    if generator.kind == "class-conditional":
        steps, batch = sampling.steps, sampling.batch_size
        return sample(generator, [concept], n, seed, steps, None, sampling.guidance, batch)[0]
    prompts = generator.prompts_of(concept)
    per_prompt = -(-n // len(prompts))
    drawn = generator.sample(
        prompts, per_prompt, seed, sampling.steps, sampling.guidance, None, sampling.batch_size, latents=True
    )
    return drawn.view(len(prompts), per_prompt, *drawn.shape[1:]).transpose(0, 1).flatten(0, 1)[:n]


def attack_rounds(
    generator,
    stack: AdapterStack,
    forgotten: list[str],
    consolidate: ConsolidateSettings,
    recovery: RecoverySettings,
    sampling: SamplingSettings,
):
    """What the fit calls after each phase: the recovery attack against the fold as it stands on every forgotten
    concept, returning the site features of `consolidate.attack_rows` rows per concept conditioned on the vector
    found, before and after the unfolded `stack`."""
    images = {
        c: concept_samples(generator, c, recovery.images, consolidate.seed + 7919 * (i + 1), sampling)
        for i, c in enumerate(forgotten)
    }
    n, r = consolidate.attack_rows, recovery

    def attacked(fold: AdapterStack, round_: int) -> SiteFeatures:
        parts = []
        for i, (concept, x0) in enumerate(images.items()):
            seed = consolidate.seed + 1000 * (round_ + 1) + i
            rng = torch.Generator().manual_seed(seed)
            xt, t = noised(generator, x0[torch.randint(len(x0), (n,), generator=rng)], rng)
            if generator.kind == "class-conditional":
                vector, _ = recover_embedding(generator, fold, x0, r.steps, r.lr, r.batch_size, seed)
                slot = generator.null_label - 1  # any concept's row: the hook gives it the vector
                labels = torch.full((n,), slot)

                def run(rows, vector=vector, slot=slot, labels=labels, xt=xt, t=t):
                    with embedding_in_place_of(generator, slot, vector):
                        return generator.predict_noise(xt[rows], t[rows], labels[rows], None)
            else:
                vector, _ = recover_token_embedding(generator, fold, x0, r.steps, r.lr, r.batch_size, seed)
                text = token_embedding_features(generator, vector).expand(n, -1, -1).contiguous()

                def run(rows, text=text, xt=xt, t=t):
                    return generator.predict_noise(xt[rows], t[rows], text[rows], None)

            parts.append(record_sites(generator.unet, stack, run, n, sampling.batch_size, consolidate.site))
        return SiteFeatures.cat(parts)

    return attacked


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
    recovery: RecoverySettings | None = None,
) -> ConsolidationResult:
    """Fold every enabled adapter of `stack` into the one adapter `name` (a new one-adapter stack); `forgotten`:
    the concepts the stack forgets (what `consolidate.forgotten_share` draws rows from, and what
    `consolidate.attack_rounds` attacks, with `recovery`'s budget)."""
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
    rounds = consolidate.attack_rounds if forgotten else 0
    if rounds and recovery is None:
        raise ValueError("consolidate.attack_rounds needs the recovery settings: the attack's budget")
    x0, cond, concepts = replay_rows(generator, stack, consolidate.replay_per_concept, consolidate.seed, sampling)
    rng = torch.Generator().manual_seed(consolidate.seed)
    ids = [generator.concepts.index(c) for c in forgotten]
    idx = row_indices(concepts, ids, consolidate.rows, consolidate.forgotten_share, rng)
    x0, cond = x0[idx], cond[idx]
    xt, t = noised(generator, x0, rng)
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
        rounds,
        attack_rounds(generator, stack, list(forgotten), consolidate, recovery, sampling) if rounds else None,
        consolidate.attack_share,
    )
    return ConsolidationResult(fitted, folded, round(time.time() - start, 1))


consolidate_task = task(consolidate, name="consolidate-adapters", cache_policy=NO_CACHE)
