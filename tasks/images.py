"""Images out of tensors: sample grids as PNG, raw samples as .npy (N x C x H x W float32 in [-1, 1])."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def grid(images: torch.Tensor, columns: int, scale: int = 2) -> Image.Image:
    """Images in [-1, 1] tiled row-major into one greyscale picture, with a 1-pixel border."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 64, dtype=np.uint8)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).mean(1, dtype=torch.float32)
    pixels = pixels.round().to(torch.uint8).numpy()
    for i in range(n):
        r, k = divmod(i, columns)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = pixels[i]
    image = Image.fromarray(canvas, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def write_samples(images: torch.Tensor, out: str | Path, columns: int) -> Path:
    """`.npy` writes the raw float32 array; anything else is written as a PNG grid. Same input, same bytes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, images.float().numpy().astype(np.float32))
    else:
        grid(images, columns).save(out, format="PNG")
    return out
