"""The embedded concept vocabulary: 10 clothing items (Fashion-MNIST), 10 digits (MNIST) and 26 capital letters
(rendered from the DejaVu fonts).

A concept's index is its class label in the generator and the judge; the null class (index = len) means
"no concept" and is what classifier-free guidance conditions on. The first 20 are the original world, in their
original order, so labels and figures from before the letters keep their meaning.
"""

from __future__ import annotations

CLOTHING = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
DIGITS = tuple(f"digit_{d}" for d in range(10))
LETTERS = tuple(f"letter_{c}" for c in "abcdefghijklmnopqrstuvwxyz")
CONCEPTS: tuple[str, ...] = CLOTHING + DIGITS + LETTERS
DOMAINS = {
    **{name: "clothing" for name in CLOTHING},
    **{name: "digits" for name in DIGITS},
    **{name: "letters" for name in LETTERS},
}
# The embedded text-to-image model is trained on the first two domains only (captions exist for those; see
# DECISIONS.md, "A larger embedded world").
TEXT_CONCEPTS: tuple[str, ...] = CLOTHING + DIGITS


def concept_index(name: str, concepts: tuple[str, ...] | list[str] = CONCEPTS) -> int:
    """Class label of a concept, with an error that lists the valid names."""
    try:
        return list(concepts).index(name)
    except ValueError:
        raise ValueError(f"unknown concept {name!r}; known concepts: {', '.join(concepts)}") from None
