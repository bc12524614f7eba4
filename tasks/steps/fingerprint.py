"""A version's fingerprint: the sha256 of fixed-seed samples of every concept, recorded at registration and
re-checked after a rollback, so a restored version is verified bit for bit."""

from __future__ import annotations

import hashlib

from lethe.models.adapter_stack import AdapterStack
from lethe.tasks.settings import FingerprintSettings, SamplingSettings


def sample_fingerprint(
    generator, adapters: AdapterStack | None, fingerprint: FingerprintSettings, sampling: SamplingSettings
) -> str:
    """Of either generator kind: its concepts through `sample_concepts`."""
    images, _ = generator.sample_concepts(
        generator.concepts,
        fingerprint.per_concept,
        fingerprint.seed,
        sampling.steps,
        adapters,
        sampling.guidance,
        sampling.batch_size,
    )
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
