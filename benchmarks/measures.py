"""What every benchmark shares: the interval of a proportion, peak memory of the process, and request
sequences written as `concept:anchor` pairs."""

from __future__ import annotations

import math
import resource


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wilson(k: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def sequence_of(text: str) -> list[tuple[str, str | None]]:
    """`concept:anchor,...` as (concept, anchor) pairs; `concept:` leaves the anchor to the automatic rule."""
    return [(c, a or None) for c, _, a in (pair.partition(":") for pair in text.split(","))]
