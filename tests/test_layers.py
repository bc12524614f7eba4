import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT.parent / "shared" / "tools" / "layers.py"


@pytest.mark.skipif(not CHECKER.is_file(), reason="../shared/tools/layers.py is not beside this checkout")
def test_imports_point_one_way():
    result = subprocess.run([sys.executable, str(CHECKER), str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_models_run_without_orchestration_libraries():
    code = ("import sys; import models.generator, models.adapter_stack, models.sampler, models.losses, "
            "models.judge; bad = {'prefect', 'mlflow', 'dvc', 'boto3'} & set(m.split('.')[0] for m in sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
