"""dvc stage `prepare`: raw idx/csv files -> 16x16 uint8 tensors with concept labels, train and test splits.

Labels follow models.concepts: Fashion-MNIST classes 0-9, digits 10-19. The output is byte-deterministic, so
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

from lethe.models.concepts import CLOTHING, CONCEPTS
from lethe.tasks.stages.entry import stage_settings


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


def prepare(data: Path, out: Path, size: int, digits_test_per_class: int) -> dict:
    fashion = data / "fashion-mnist"
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
        x = torch.cat([resize(images, size), resize(digit_images[mask], size)])
        y = torch.cat([torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(digit_labels[mask] + len(CLOTHING))])
        save_file({"images": x.contiguous(), "labels": y.contiguous()}, out / f"{split}.safetensors")
        summary[split] = {"images": len(y), "per_concept": torch.bincount(y, minlength=len(CONCEPTS)).tolist()}
    (out / "concepts.json").write_text(json.dumps({"concepts": list(CONCEPTS), "splits": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    settings = stage_settings(__doc__)
    summary = prepare(
        settings.paths.data, settings.paths.prepared, settings.data.image_size, settings.data.digits_test_per_class
    )
    print(json.dumps({k: v["images"] for k, v in summary.items()}))
