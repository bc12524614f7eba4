"""Sample a registered version to a file: PNG grid or raw .npy; the same seed and version give the same bytes."""
from __future__ import annotations

import hashlib
from pathlib import Path

from models.sampler import sample
from tasks.images import write_samples
from tasks.registry import Registry
from tasks.runtime import configure_torch
from tasks.settings import Workspace, load_params


def sample_version(concept: str, version: str | None, n: int, seed: int, intensity: float, out: str | Path,
                   registry: Registry | None = None) -> Path:
    configure_torch()
    params = load_params()
    registry = registry or Registry(Workspace.resolve(), params["registry"]["model_name"])
    if version is None:
        production = registry.production()
        if production is None:
            raise KeyError("no production version yet: run `lethe run` (or `lethe demo`) first")
        version = production.version
    registry.version(version)
    generator, adapters = registry.load(version)
    for i in range(len(adapters)):
        adapters.set_intensity(i, adapters.slots[i].intensity * intensity)
    images, _ = sample(generator, [concept], n, seed, params["sampling"]["steps"], adapters,
                       params["sampling"]["guidance"], params["sampling"]["batch_size"])
    return write_samples(images, out, columns=min(n, 8))


FINGERPRINT_SEED = 20251122


def sample_fingerprint(generator, adapters, steps: int, per_concept: int = 1) -> str:
    """sha256 of fixed-seed samples of every concept: recorded at registration, re-checked after a rollback."""
    images, _ = sample(generator, generator.concepts, per_concept, FINGERPRINT_SEED, steps, adapters)
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
