"""The recovery audit of a new version: for every concept it forgets, a white-box attacker optimises a free
class embedding on real images of the concept (`models.recovery_attack`) and samples with it; the judge's
accuracy on those samples is the attack's success. A forgetting that yields to the attack is hidden, not gone:
`gates.recovery_acc_max` keeps such a version out of production.

The attacker's images come from the prepared train split, so the judged evaluation set stays unseen. The
budget is `recovery` in the settings. Class-conditional models only: for a text-to-image model the
counterpart is textual inversion on a token embedding, which Lethe does not run yet, so its versions are
recorded as not audited.
"""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from lethe.models.recovery_attack import recover_embedding, sample_with_embedding
from lethe.tasks.settings import RecoverySettings, SamplingSettings

ATTACK_SEED = 0  # the attacker's noise and draws
SAMPLE_SEED = 31337  # the attacked samples' noise: the same for every version, so versions compare


def audit_recovery(
    generator,
    adapters,
    judge,
    concepts: list[str],
    attacker: tuple[torch.Tensor, torch.Tensor] | None,
    recovery: RecoverySettings,
    sampling: SamplingSettings,
) -> dict[str, float]:
    """{concept: judged accuracy of its attacked samples} for every concept in `concepts`; empty where the
    model kind has no attack (text-to-image) or there are no attacker images (`attacker` None)."""
    if generator.kind != "class-conditional" or attacker is None:
        return {}
    images, labels = attacker
    out = {}
    for concept in concepts:
        label = generator.concepts.index(concept)
        own = images[labels == label][: recovery.images]
        if len(own) == 0:
            raise ValueError(f"the recovery audit has no real images of {concept} in the attacker's split")
        vector, _ = recover_embedding(
            generator, adapters, own, recovery.steps, recovery.lr, recovery.batch_size, ATTACK_SEED
        )
        attacked = sample_with_embedding(
            generator, adapters, vector, recovery.samples, SAMPLE_SEED, sampling.steps, sampling.guidance
        )
        predicted = judge.classify(attacked)
        out[concept] = float((predicted == judge.concepts.index(concept)).float().mean())
    return out


audit_recovery_task = task(audit_recovery, name="recovery-audit", cache_policy=NO_CACHE)
