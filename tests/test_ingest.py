import shutil
import subprocess
import sys

import pytest

from lethe.tasks.stages.ingest import MissingSource, fashion_source, verify
from tests.conftest import ROOT as PROJECT_ROOT


def test_missing_package_data_gives_install_instructions(tmp_path):
    with pytest.raises(MissingSource, match="apt-get install -y dataset-fashion-mnist"):
        fashion_source(tmp_path)


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
