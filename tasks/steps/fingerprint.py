"""A version's fingerprint: the sha256 of fixed-seed samples of every concept, recorded at registration and
re-checked after a rollback, so a restored version is verified bit for bit."""

from __future__ import annotations

import hashlib

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.sampler import sample
from lethe.tasks.settings import FingerprintSettings, SamplingSettings


def sample_fingerprint(
    generator: Generator, adapters: AdapterStack | None, fingerprint: FingerprintSettings, sampling: SamplingSettings
) -> str:
    images, _ = sample(
        generator,
        generator.concepts,
        fingerprint.per_concept,
        fingerprint.seed,
        sampling.steps,
        adapters,
        sampling.guidance,
        sampling.batch_size,
    )
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
