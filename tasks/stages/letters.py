"""The third embedded domain: capital letters A-Z rendered from the DejaVu fonts that Debian ships.

Each image is one letter in one of the font faces, at a random size, rotation and offset (the augmentation), drawn
white on black at 28x28 like the other two domains before `prepare` shrinks them. Rendering is seeded and uses the
FreeType that Pillow's pinned wheel bundles, so the tensors are byte-identical on every machine with the same fonts
(data.dvc pins the font files' hashes).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# The text faces of fonts-dejavu-core and fonts-dejavu-extra (the math face is left out: its letters are italics).
FONT_FILES = tuple(
    f"DejaVu{family}{face}.ttf"
    for family, faces in (
        ("Sans", ("", "-Bold", "-Oblique", "-BoldOblique", "-ExtraLight")),
        ("SansCondensed", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("SansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("Serif", ("", "-Bold", "-Italic", "-BoldItalic")),
        ("SerifCondensed", ("", "-Bold", "-Italic", "-BoldItalic")),
    )
    for face in faces
)
CANVAS = 28
POINT_SIZES = (16, 24)  # inclusive range of the glyph's point size on the 28x28 canvas
MAX_ROTATION = 12.0  # degrees, either way
MAX_SHIFT = 2  # pixels, either way, after centring the glyph's ink


@lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def render(letter: str, font: Path, size: int, rotation: float, shift: tuple[int, int]) -> np.ndarray:
    """One 28x28 uint8 image: the glyph's ink centred, rotated about the centre, then shifted."""
    face = _font(str(font), size)
    left, top, right, bottom = face.getbbox(letter)
    image = Image.new("L", (CANVAS, CANVAS), 0)
    origin = ((CANVAS - (right - left)) / 2 - left, (CANVAS - (bottom - top)) / 2 - top)
    ImageDraw.Draw(image).text(origin, letter, fill=255, font=face)
    image = image.rotate(rotation, resample=Image.Resampling.BILINEAR, translate=shift)
    return np.asarray(image, dtype=np.uint8)


def render_letters(fonts: list[Path], per_letter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_letter` images of each letter (faces taken in turn, augmentation drawn from `seed`) and labels 0-25."""
    missing = [str(f) for f in fonts if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"font files missing: {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, letter in enumerate(ALPHABET):
        sizes = rng.integers(POINT_SIZES[0], POINT_SIZES[1] + 1, per_letter)
        rotations = rng.uniform(-MAX_ROTATION, MAX_ROTATION, per_letter)
        shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, (per_letter, 2))
        for i in range(per_letter):
            font = fonts[(i + label) % len(fonts)]
            shift = (int(shifts[i, 0]), int(shifts[i, 1]))
            images.append(render(letter, font, int(sizes[i]), float(rotations[i]), shift))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
