"""The embedded concept vocabulary: 10 clothing items (Fashion-MNIST) and 10 digits (MNIST).

A concept's index is its class label in the generator and the judge; the null class (index = len) means
"no concept" and is what classifier-free guidance conditions on.
"""

from __future__ import annotations

CLOTHING = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
DIGITS = tuple(f"digit_{d}" for d in range(10))
CONCEPTS: tuple[str, ...] = CLOTHING + DIGITS
DOMAINS = {**{name: "clothing" for name in CLOTHING}, **{name: "digits" for name in DIGITS}}


def concept_index(name: str, concepts: tuple[str, ...] | list[str] = CONCEPTS) -> int:
    """Class label of a concept, with an error that lists the valid names."""
    try:
        return list(concepts).index(name)
    except ValueError:
        raise ValueError(f"unknown concept {name!r}; known concepts: {', '.join(concepts)}") from None
