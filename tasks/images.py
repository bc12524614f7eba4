"""Images out of tensors: sample grids as PNG (plain, or one labelled row per concept), raw samples as .npy
(N x C x H x W float32 in [-1, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def grid(images: torch.Tensor, columns: int, scale: int = 2) -> Image.Image:
    """Images in [-1, 1] tiled row-major into one greyscale picture, with a 1-pixel border."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 64, dtype=np.uint8)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).mean(1, dtype=torch.float32)
    pixels = pixels.round().to(torch.uint8).numpy()
    for i in range(n):
        r, k = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = pixels[i]
    image = Image.fromarray(canvas, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


SAMPLE_FORMATS = (".png", ".npy")


def write_samples(images: torch.Tensor, out: str | Path, columns: int) -> Path:
    """`.npy` writes the raw float32 array, `.png` a grid; same input, same bytes. Other names are refused."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SAMPLE_FORMATS:
        raise ValueError(f"cannot write samples to {str(out)!r}: use a {' or '.join(SAMPLE_FORMATS)} file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, images.float().numpy().astype(np.float32))
    else:
        grid(images, columns).save(out, format="PNG")
    return out


def concept_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    concepts: list[str],
    order: list[str],
    per_row: int,
    forgotten: list[str] = (),
    scale: int = 2,
) -> Image.Image:
    """One row per concept in `order`, each labelled with its name on the left; forgotten concepts are
    marked "(forgotten)" in red, so a person reading the grid knows which rows should not show the concept."""
    rows = [images[labels == concepts.index(c)][:per_row] for c in order]
    font = ImageFont.load_default(size=11)
    names = [f"{c} (forgotten)" if c in forgotten else c for c in order]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(measure.textbbox((0, 0), n, font=font)[2] for n in names) + 10
    tiles = [grid(r, per_row, scale).convert("RGB") for r in rows]
    height = max(t.height for t in tiles)
    canvas = Image.new("RGB", (label_width + max(t.width for t in tiles), height * len(tiles)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, name, concept) in enumerate(zip(tiles, names, order)):
        canvas.paste(tile, (label_width, i * height))
        colour = (200, 0, 0) if concept in forgotten else (0, 0, 0)
        draw.text((4, i * height + (height - 12) // 2), name, fill=colour, font=font)
    return canvas
