"""dvc stage `prepare`: raw idx/csv/font files -> 16x16 uint8 tensors with concept labels, train and test splits.

Labels follow models.concepts: Fashion-MNIST classes 0-9, digits 10-19, letters 20-45 (rendered here from the
font files, see tasks.stages.letters). Each split lists the domains in that order, so the first two domains' rows
are exactly those of the 20-concept world. The output is byte-deterministic, so
a fresh checkout re-creates exactly the hash in dvc.lock and the trained models downstream stay valid.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lethe.models.concepts import CLOTHING, CONCEPTS, DIGITS
from lethe.tasks.stages.entry import stage_settings
from lethe.tasks.stages.letters import FONT_FILES, render_letters


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def resize(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    return F.interpolate(x, size=(size, size), mode="area").round().clamp(0, 255).to(torch.uint8)


def prepare(data: Path, out: Path, size: int, digits_test_per_class: int, letters: dict[str, int], seed: int) -> dict:
    """Write both splits; `letters` is the number of rendered images per capital in each split."""
    fashion = data / "fashion-mnist"
    fonts = [data / "fonts" / name for name in FONT_FILES]
    splits = {
        "train": (read_idx(fashion / "train-images-idx3-ubyte.gz"), read_idx(fashion / "train-labels-idx1-ubyte.gz")),
        "test": (read_idx(fashion / "t10k-images-idx3-ubyte.gz"), read_idx(fashion / "t10k-labels-idx1-ubyte.gz")),
    }
    digit_images, digit_labels = read_digits(data / "mnist-5k" / "mnist_5k.csv.gz")
    test_mask = np.zeros(len(digit_labels), dtype=bool)
    for d in range(10):
        test_mask[np.flatnonzero(digit_labels == d)[-digits_test_per_class:]] = True
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, (images, labels) in splits.items():
        mask = test_mask if split == "test" else ~test_mask
        letter_images, letter_labels = render_letters(fonts, letters[split], seed + (split == "test"))
        x = torch.cat([resize(images, size), resize(digit_images[mask], size), resize(letter_images, size)])
        y = torch.cat(
            [
                torch.from_numpy(labels.astype(np.int64)),
                torch.from_numpy(digit_labels[mask] + len(CLOTHING)),
                torch.from_numpy(letter_labels + len(CLOTHING) + len(DIGITS)),
            ]
        )
        save_file({"images": x.contiguous(), "labels": y.contiguous()}, out / f"{split}.safetensors")
        summary[split] = {"images": len(y), "per_concept": torch.bincount(y, minlength=len(CONCEPTS)).tolist()}
    (out / "concepts.json").write_text(json.dumps({"concepts": list(CONCEPTS), "splits": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    settings = stage_settings(__doc__)
    data = settings.data
    summary = prepare(
        settings.paths.data,
        settings.paths.prepared,
        data.image_size,
        data.digits_test_per_class,
        {"train": data.letters_train_per_class, "test": data.letters_test_per_class},
        data.letters_seed,
    )
    print(json.dumps({k: v["images"] for k, v in summary.items()}))
