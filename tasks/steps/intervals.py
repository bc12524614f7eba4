"""Confidence intervals of judged accuracies: a proportion of n samples, reported with its 95% Wilson
interval (it stays inside [0, 1] and is honest at 0 of n, where a forgotten concept should be)."""

from __future__ import annotations

import math


def wilson(k: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]
