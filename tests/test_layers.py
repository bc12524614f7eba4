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
    # boto3 may arrive only through diffusers' optional accelerate (its SageMaker config imports boto3 when it is
    # installed, as it is beside peft for the fade-lora baseline); nothing of models/ may pull it in.
    code = ("import sys; import models.generator, models.adapter_stack, models.sampler, models.losses, "
            "models.judge, models.saliency, models.distill_targets, models.unet_split; "
            "loaded = set(m.split('.')[0] for m in sys.modules); bad = {'prefect', 'mlflow', 'dvc'} & loaded; "
            "assert not bad, bad; "
            "assert 'boto3' not in loaded or 'accelerate.commands.config.sagemaker' in sys.modules, 'boto3'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
