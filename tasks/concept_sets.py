"""Concepts of a text-to-image model as prompt sets, from a YAML file the user provides:

    concepts:
      - name: trouser
        prompts: [a photo of trousers, a pair of trousers]      # what unlearning trains on
        held_out: [a pair of pants, slacks]                     # evaluation only: the paraphrase-leakage test

Validated at load: names are identifiers and unique, every concept has prompts, no prompt is used twice
(within a concept, across concepts, or as both a training and a held-out prompt), and unknown keys are
refused with their path, as in the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Prompt = Annotated[str, Field(min_length=1, max_length=300)]


class ConceptPrompts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,63}$")]
    prompts: Annotated[list[Prompt], Field(min_length=1)]
    held_out: list[Prompt] = []  # optional: a user's file may have no paraphrases to hold out


class ConceptSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concepts: Annotated[list[ConceptPrompts], Field(min_length=2)]

    @model_validator(mode="after")
    def _distinct(self):
        names = [c.name for c in self.concepts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"concept names used twice: {twice}")
        seen: dict[str, str] = {}
        for concept in self.concepts:
            for prompt in concept.prompts + concept.held_out:
                key = " ".join(prompt.lower().split())
                if key in seen:
                    raise ValueError(f"prompt {prompt!r} of {concept.name!r} is also a prompt of {seen[key]!r}")
                seen[key] = concept.name
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def __getitem__(self, name: str) -> ConceptPrompts:
        for concept in self.concepts:
            if concept.name == name:
                return concept
        raise KeyError(f"unknown concept {name!r}; known concepts: {', '.join(self.names)}")


class ConceptFileError(ValueError):
    """A concept file that cannot be used; the message names the offending entries."""


def load_concept_set(path: str | Path) -> ConceptSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"concept file {str(path)!r} does not exist")
    try:
        return ConceptSet.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as error:
        raise ConceptFileError(f"{path} is not valid YAML: {error}") from None
    except ValidationError as error:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()]
        raise ConceptFileError(f"invalid concept file {path}:\n" + "\n".join(lines)) from None
