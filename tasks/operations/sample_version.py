"""`lethe sample`: a registered version's samples of one concept to a file (PNG grid or raw .npy); the same
seed and version give the same bytes."""

from __future__ import annotations

from pathlib import Path

from lethe.models.sampler import sample
from lethe.tasks.images import SAMPLE_FORMATS, write_samples
from lethe.tasks.settings import SamplingSettings
from lethe.tasks.stores.registry import Registry


def sample_version(
    registry: Registry,
    concept: str,
    version: str | None,
    n: int,
    seed: int,
    intensity: float,
    out: str | Path,
    sampling: SamplingSettings,
    columns: int,
) -> Path:
    out = Path(out)
    if out.suffix.lower() not in SAMPLE_FORMATS:
        raise ValueError(
            f"--out {str(out)!r}: lethe sample writes {' or '.join(SAMPLE_FORMATS)} files, "
            f"not {out.suffix or 'files without an extension'!r}"
        )
    if n < 1:
        raise ValueError(f"--n {n}: ask for at least one sample")
    if intensity < 0:
        raise ValueError(f"--intensity {intensity}: must be >= 0 (0 = the base model)")
    if version is None:
        production = registry.production()
        if production is None:
            raise KeyError("no production version yet: run `lethe run` (or `lethe demo`) first")
        version = production.version
    generator, adapters = registry.load(version)
    if concept not in generator.concepts:
        raise ValueError(
            f"--concept {concept!r} is not a concept of version {version}; known: {', '.join(generator.concepts)}"
        )
    for name in adapters.names:
        adapters.set_intensity(name, adapters.slots[name].intensity * intensity)
    images, _ = sample(generator, [concept], n, seed, sampling.steps, adapters, sampling.guidance, sampling.batch_size)
    return write_samples(images, out, columns=min(n, columns))
