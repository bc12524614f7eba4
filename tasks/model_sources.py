"""Where a workspace's models come from: the generator of `generator.folder` (bound to its concept file when
it is text-to-image) and the judge (the shipped one, a judge folder, or a plug-in `package.module:callable`).

Both are checked when opened, so a wrong folder, kind, concept file or judge fails before any work starts,
with a message that says what was expected.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lethe.models.generator_kinds import kind_of, load_generator
from lethe.models.judge import CONFIG_NAME, Judge
from lethe.models.judge_plugin import PluginJudge
from lethe.tasks.concept_sets import load_concept_set
from lethe.tasks.settings import GeneratorSettings

CONCEPT_FILE = "concepts.yaml"  # a text-to-image folder's own concept file, when the settings name none
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # weights that run code when loaded


def refuse_pickles(folder: Path) -> None:
    """Weights are read only from safetensors: a folder that also holds pickled weights is refused, so no
    loader can fall back to one."""
    found = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if found:
        raise ValueError(
            f"{folder} holds pickled weights ({', '.join(found[:5])}); Lethe loads only safetensors: convert "
            "them (diffusers' save_pretrained writes safetensors) and remove the pickles"
        )


def generator_kind(source: GeneratorSettings) -> str:
    """The kind of the settings' generator: as declared, or (auto) what its folder's files say."""
    return kind_of(source.folder) if source.kind == "auto" else source.kind


def open_generator(source: GeneratorSettings):
    """The generator the settings point at, with its concepts (a text-to-image one bound to its file)."""
    refuse_pickles(source.folder)
    generator = load_generator(source.folder, None if source.kind == "auto" else source.kind)
    if hasattr(generator, "with_concepts"):  # its concepts are prompt sets from a file
        concepts = source.concepts or source.folder / CONCEPT_FILE
        if source.concepts is None and not concepts.is_file():
            raise FileNotFoundError(
                f"{source.folder} is a text-to-image folder without {CONCEPT_FILE}: name your concept file "
                "in generator.concepts (see README, 'Your own model')"
            )
        generator.with_concepts(load_concept_set(concepts).concepts)
    return generator


def open_judge(spec: str | None, default: Path):
    """The judge: `default` (paths.judge) when `spec` is None, a judge folder, or `module:callable`."""
    if spec is None:
        return Judge.load(default)
    if (Path(spec) / CONFIG_NAME).is_file():
        return Judge.load(spec)
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(
            f"generator.judge {spec!r} is neither a judge folder (with {CONFIG_NAME}) nor package.module:callable"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"generator.judge {spec!r} cannot be imported: {error}") from None
    found = factory()
    return found if isinstance(found, Judge) else PluginJudge(found)


def check_judge_covers(judge, concepts: list[str]) -> None:
    """Every concept of the generator must be one the judge can name."""
    missing = [c for c in concepts if c not in judge.concepts]
    if missing:
        raise ValueError(f"the judge cannot name the generator's concepts {missing}; it knows {judge.concepts}")
