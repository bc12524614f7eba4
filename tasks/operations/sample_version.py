"""`lethe sample`: a registered version's samples of one concept (through its prompts, for a text-to-image
version) or of one prompt, to a file (PNG grid or raw .npy); the same seed and version give the same bytes."""

from __future__ import annotations

from pathlib import Path

from lethe.tasks.images import SAMPLE_FORMATS, write_samples
from lethe.tasks.settings import SamplingSettings
from lethe.tasks.stores.registry import Registry


def sample_version(
    registry: Registry,
    concept: str | None,
    prompt: str | None,
    version: str | None,
    n: int,
    seed: int,
    intensity: float,
    out: str | Path,
    sampling: SamplingSettings,
    columns: int,
) -> Path:
    out = Path(out)
    if (concept is None) == (prompt is None):
        raise ValueError("give either --concept NAME or --prompt TEXT")
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
    if prompt is not None and generator.request_column != "prompt":
        raise ValueError(f"version {version} is a {generator.kind} generator: it takes --concept, not --prompt")
    if concept is not None and concept not in generator.concepts:
        raise ValueError(
            f"--concept {concept!r} is not a concept of version {version}; known: {', '.join(generator.concepts)}"
        )
    for name in adapters.names:
        adapters.set_intensity(name, adapters.slots[name].intensity * intensity)
    steps, guidance, batch = sampling.steps, sampling.guidance, sampling.batch_size
    if prompt is not None:
        images = generator.sample_requests([prompt], n, seed, steps, adapters, guidance, batch)
    else:
        images, _ = generator.sample_concepts([concept], n, seed, steps, adapters, guidance, batch)
    return write_samples(images, out, columns=min(n, columns))
