import shutil
import subprocess
import sys

import pytest

from lethe.tasks.stages.ingest import MissingSource, fashion_source, fonts_source, verify
from lethe.tasks.stages.letters import ALPHABET, FONT_FILES, render_letters
from tests.conftest import ROOT as PROJECT_ROOT


def test_missing_package_data_gives_install_instructions(tmp_path):
    with pytest.raises(MissingSource, match="apt-get install -y dataset-fashion-mnist"):
        fashion_source(tmp_path)


def test_missing_fonts_give_install_instructions(tmp_path):
    with pytest.raises(MissingSource, match="apt-get install -y fonts-dejavu-core fonts-dejavu-extra"):
        fonts_source(tmp_path)


@pytest.mark.skipif(not (PROJECT_ROOT / "data" / "fonts").is_dir(), reason="run `make data` first")
def test_letters_render_the_same_bytes_every_time_and_differ_by_seed():
    fonts = [PROJECT_ROOT / "data" / "fonts" / name for name in FONT_FILES]
    images, labels = render_letters(fonts, 3, seed=0)
    again, _ = render_letters(fonts, 3, seed=0)
    other, _ = render_letters(fonts, 3, seed=1)
    assert images.shape == (3 * len(ALPHABET), 28, 28) and labels.tolist() == [i for i in range(26) for _ in range(3)]
    assert (images == again).all() and not (images == other).all()
    assert images.reshape(len(images), -1).max(1).min() > 100  # every image holds a glyph's ink
    with pytest.raises(FileNotFoundError, match="font files missing"):
        render_letters([PROJECT_ROOT / "data" / "fonts" / "NoSuchFont.ttf"], 1, seed=0)


@pytest.mark.skipif(not (PROJECT_ROOT / "data" / "mnist-5k").is_dir(), reason="run `make data` first")
def test_changed_data_is_caught_against_data_dvc(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_ROOT / "data.dvc", project)
    shutil.copytree(PROJECT_ROOT / "data", project / "data")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    verify(project / "data")  # an exact copy passes
    recorded = (project / "data.dvc").read_text()
    with open(project / "data" / "mnist-5k" / "mnist_5k.csv.gz", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RuntimeError, match="does not match data.dvc"):
        verify(project / "data")
    assert (project / "data.dvc").read_text() == recorded  # the record is never rewritten by a bad copy
