"""The recovery audit of a new version: for every concept it forgets, a white-box attacker optimises one free
vector on images of the concept (`models.recovery_attack`) and samples with it; the judge's accuracy on those
samples is the attack's success. A forgetting that yields to the attack is hidden, not gone:
`gates.recovery_acc_max` keeps such a version out of production. The budget is `recovery` in the settings.

The vector is a class embedding on a class-conditional model and a token embedding (textual inversion) on a
text-to-image one. The attacker's images are real ones from the prepared train split, so the judged evaluation
set stays unseen: all of a concept's, up to `recovery.images`, found by the concept's name (the split's labels
index `models.concepts.CONCEPTS`, as for KID). The embedded text-to-image model is trained on exactly those
images, captioned by concept (`tasks/stages/train_text_to_image.py`), and judged by the same judge, so its
concepts are the split's classes and the rule is the class-conditional one, the images encoded by the model's
VAE. A text-to-image concept that is no class of the split, or a model that draws another size or number of
channels (a user's own), is attacked on the base model's samples of the concept's prompts instead
(`recovery.images` of them, spread over its prompts): the concept as the model knew it before any request.
"""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from lethe.models.concepts import CONCEPTS
from lethe.models.recovery_attack import (
    encode_latents,
    recover_embedding,
    recover_token_embedding,
    sample_with_embedding,
    sample_with_token_embedding,
)
from lethe.tasks.settings import RecoverySettings, SamplingSettings

ATTACK_SEED = 0  # the attacker's noise and draws
SAMPLE_SEED = 31337  # the attacked samples' noise: the same for every version, so versions compare
ATTACKED = {"class-conditional": "class embedding", "text-to-image": "token embedding"}  # the vector, per kind
REAL, BASE_SAMPLES = "real images (prepared train split)", "the base model's samples of its prompts"


def image_shape(generator) -> tuple[int, ...]:
    """(channels, height, width) of what the generator draws."""
    if generator.kind != "text-to-image":
        return tuple(generator.image_shape)
    vae, unet = generator.vae.config, generator.unet.config
    size = unet.sample_size * 2 ** (len(vae.block_out_channels) - 1)  # as diffusers' pipeline sizes its output
    return (vae.in_channels, size, size)


def attacker_source(generator, concept: str, attacker: tuple[torch.Tensor, torch.Tensor] | None) -> str:
    """Where the attacker's images of `concept` come from (REAL or BASE_SAMPLES; see the module's docstring)."""
    fits = attacker is not None and tuple(attacker[0].shape[1:]) == image_shape(generator)
    return REAL if generator.kind != "text-to-image" or (fits and concept in CONCEPTS) else BASE_SAMPLES


def real_images(concept: str, attacker: tuple[torch.Tensor, torch.Tensor], n: int) -> torch.Tensor:
    images, labels = attacker
    own = images[labels == CONCEPTS.index(concept)][:n] if concept in CONCEPTS else images[:0]
    if len(own) == 0:
        raise ValueError(f"the recovery audit has no real images of {concept} in the attacker's split")
    return own


def attacker_latents(generator, concept: str, attacker, recovery: RecoverySettings, sampling: SamplingSettings):
    """A text-to-image attacker's latents of `concept`: its real images encoded, or the base's samples (the
    generator without adapters: Lethe never changes the base's weights)."""
    if attacker_source(generator, concept, attacker) == REAL:
        return encode_latents(generator, real_images(concept, attacker, recovery.images))
    prompts = generator.prompts_of(concept)
    per_prompt = -(-recovery.images // len(prompts))
    drawn = generator.sample(
        prompts, per_prompt, ATTACK_SEED, sampling.steps, sampling.guidance, None, sampling.batch_size, latents=True
    )
    round_robin = drawn.view(len(prompts), per_prompt, *drawn.shape[1:]).transpose(0, 1).flatten(0, 1)
    return round_robin[: recovery.images]  # every prompt as evenly as the budget allows


def attacked_samples(generator, adapters, concept, attacker, recovery: RecoverySettings, sampling: SamplingSettings):
    """The attack on one concept: the vector it finds, and `recovery.samples` samples drawn with it."""
    r, sp = recovery, sampling
    if generator.kind == "text-to-image":
        latents = attacker_latents(generator, concept, attacker, r, sp)
        vector, _ = recover_token_embedding(generator, adapters, latents, r.steps, r.lr, r.batch_size, ATTACK_SEED)
        return sample_with_token_embedding(
            generator, adapters, vector, r.samples, SAMPLE_SEED, sp.steps, sp.guidance, sp.batch_size
        )
    own = real_images(concept, attacker, r.images)
    vector, _ = recover_embedding(generator, adapters, own, r.steps, r.lr, r.batch_size, ATTACK_SEED)
    return sample_with_embedding(generator, adapters, vector, r.samples, SAMPLE_SEED, sp.steps, sp.guidance)


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
    model kind has no attack, or a class-conditional model has no attacker images (`attacker` None; a
    text-to-image one then attacks on the base's samples)."""
    if generator.kind not in ATTACKED or (generator.kind == "class-conditional" and attacker is None):
        return {}
    out = {}
    for concept in concepts:
        predicted = judge.classify(attacked_samples(generator, adapters, concept, attacker, recovery, sampling))
        out[concept] = float((predicted == judge.concepts.index(concept)).float().mean())
    return out


audit_recovery_task = task(audit_recovery, name="recovery-audit", cache_policy=NO_CACHE)
