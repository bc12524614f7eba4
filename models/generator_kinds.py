"""Which kind of generator a folder holds, and loading it: a class-conditional Lethe folder (`lethe.json`)
or a Stable-Diffusion-layout text-to-image folder (`model_index.json`). Kinds live in one dict, by name."""

from __future__ import annotations

from pathlib import Path

from lethe.models.generator import META_NAME, Generator
from lethe.models.text_generator import TextToImageGenerator, is_text_to_image_folder

KINDS = {Generator.kind: Generator, TextToImageGenerator.kind: TextToImageGenerator}


def kind_of(folder: str | Path) -> str:
    """The kind the folder's own files declare."""
    folder = Path(folder)
    if (folder / META_NAME).is_file():
        return Generator.kind
    if is_text_to_image_folder(folder):
        return TextToImageGenerator.kind
    raise FileNotFoundError(
        f"{str(folder)!r} holds no generator: expected {META_NAME} (a class-conditional Lethe "
        "folder) or model_index.json with unet, vae, text_encoder, tokenizer and scheduler "
        "(a Stable-Diffusion-layout folder)"
    )


def load_generator(folder: str | Path, kind: str | None = None):
    """The generator in `folder`; `kind` (from the settings) must agree with the folder when given."""
    found = kind_of(folder)
    if kind is not None and kind != found:
        if kind not in KINDS:
            raise ValueError(f"unknown generator kind {kind!r}; known: {', '.join(KINDS)}")
        raise ValueError(f"{str(folder)!r} holds a {found} generator, but the settings say {kind!r}")
    return KINDS[found].from_folder(folder)
