"""The embedded text-to-image model's captions: names and paraphrases of the 20 concepts, and templates.

Per concept, `prompts` are what an unlearning request trains on, and `held_out` are paraphrases the base
learns from its captions but that no unlearning step ever uses: evaluating on them measures whether
forgetting generalises to wordings it was not trained on (the leakage test).
"""

from __future__ import annotations

NAMES = {  # concept: (prompt names, held-out names)
    "tshirt": (["a t-shirt", "a tee shirt"], ["a short-sleeved top", "a tee"]),
    "trouser": (["trousers", "a pair of trousers"], ["pants", "a pair of slacks"]),
    "pullover": (["a pullover", "a jumper"], ["a sweater", "a knitted sweater"]),
    "dress": (["a dress", "a long dress"], ["a gown", "a frock"]),
    "coat": (["a coat", "a winter coat"], ["an overcoat", "a warm jacket"]),
    "sandal": (["a sandal", "a pair of sandals"], ["a flip-flop", "an open shoe"]),
    "shirt": (["a shirt", "a button shirt"], ["a blouse", "a collared shirt"]),
    "sneaker": (["a sneaker", "a trainer shoe"], ["a running shoe", "a sports shoe"]),
    "bag": (["a bag", "a handbag"], ["a purse", "a tote"]),
    "ankle_boot": (["an ankle boot", "a boot"], ["a short boot", "a bootie"]),
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
for _d, _word in enumerate(DIGIT_WORDS):
    NAMES[f"digit_{_d}"] = ([f"the digit {_d}", f"a handwritten {_d}"], [f"the number {_word}", f"a written {_word}"])

TEMPLATES = ("{}", "a photo of {}", "a picture of {}", "a drawing of {}")


def captions(concept: str) -> list[str]:
    """Every caption the base trains on for `concept`: each name, prompt or held-out, in each template."""
    prompts, held_out = NAMES[concept]
    return [t.format(name) for name in prompts + held_out for t in TEMPLATES]


def prompt_sets(concepts: list[str]) -> dict:
    """The concept file of the embedded model: unlearning prompts (every template) and held-out paraphrases."""
    return {
        "concepts": [
            {
                "name": c,
                "prompts": [t.format(n) for n in NAMES[c][0] for t in TEMPLATES],
                "held_out": [t.format(n) for n in NAMES[c][1] for t in TEMPLATES[:2]],
            }
            for c in concepts
        ]
    }
