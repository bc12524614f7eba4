"""What every benchmark shares: the interval of a proportion, an anchor's confusion, peak memory of the process,
and request sequences written as `concept:anchor` pairs."""

from __future__ import annotations

import resource
import shlex

from lethe.tasks.steps.intervals import wilson  # noqa: F401  (the benchmarks' intervals are the pipeline's)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sequence_of(text: str) -> list[tuple[str, str | None]]:
    """`concept:anchor,...` as (concept, anchor) pairs; `concept:` leaves the anchor to the automatic rule."""
    return [(c, a or None) for c, _, a in (pair.partition(":") for pair in text.split(","))]


def set_overrides(command: str) -> dict[str, str]:
    """The `--set SECTION.KEY=VALUE` pairs of a recorded command: a run's setting, as it was run."""
    words = shlex.split(command)
    return dict(w.split("=", 1) for k, w in zip(words, words[1:]) if k == "--set")


def anchor_confusion(predicted, concept: int) -> dict:
    """The anchor's confusion (the JSON calls it `floor`): the share of the anchor's samples, judged as
    `predicted` (class indices), that the judge calls the forgotten `concept`, with its Wilson interval. A
    model that draws the concept exactly as its anchor scores this forget accuracy; it is not a lower bound."""
    n = len(predicted)
    if n == 0:
        raise ValueError("no samples of the anchor to judge")
    hits = int((predicted == concept).sum())
    return {"floor": round(hits / n, 4), "floor_ci": wilson(hits, n), "n": n}
