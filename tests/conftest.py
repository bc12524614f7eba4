"""Shared fixtures: a tiny untrained generator folder, small params, an isolated workspace."""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
torch.set_flush_denormal(True)
# Prefect logs "Stopping temporary server" after pytest has closed its capture streams; without this, logging
# prints a "--- Logging error ---" traceback below the test summary.
logging.raiseExceptions = False

# Prefect and DVC bind their log handlers to sys.stdout/stderr when first imported: import them now, on the
# session's streams, not inside a test whose capsys stream is closed after it.
import dvc.repo  # noqa: E402,F401
import flows.unlearn  # noqa: E402,F401
from models.concepts import CONCEPTS  # noqa: E402
from models.generator import Generator, build_scheduler, build_unet  # noqa: E402
from models.judge import Judge  # noqa: E402
from tasks.settings import PROJECT_ROOT, load_params  # noqa: E402


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    unet = build_unet(16, 1, len(CONCEPTS), block_channels=(16, 32), layers_per_block=1, norm_groups=8)
    return Generator(unet, build_scheduler(100), list(CONCEPTS)).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory) -> Path:
    return tiny_generator().save(tmp_path_factory.mktemp("tiny-generator"))


def small_params(**overrides) -> dict:
    """params.yaml with budgets cut to seconds; `overrides` replaces whole sections."""
    params = copy.deepcopy(load_params(PROJECT_ROOT / "params.yaml"))
    params["sampling"].update(steps=4, batch_size=256)
    params["distill"].update(replay_per_concept=4)
    params["train"].update(steps=6, batch_size=8, pool_rows=64)
    params["eval"].update(samples_per_concept=4, kid_subset=10, device="cpu")
    params["adapter"].update(targets=["mid_block"], candidates=["mid_block", "up_blocks.0", "up_blocks.1"], k=1)
    params.update(overrides)
    return params


@pytest.fixture
def write_params(tmp_path):
    def write(params: dict) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        return path
    return write


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_pipeline_params(root: Path, generator_dir: Path) -> dict:
    """Params for the real pipeline on a tiny untrained generator: a tiny random judge, a fake prepared test
    split (all under `root`), budgets of seconds and gates that always pass."""
    torch.manual_seed(0)
    judge_dir = Judge(list(CONCEPTS), width=8, features=16).eval().save(root / "judge")
    prepared = root / "prepared"
    prepared.mkdir(exist_ok=True)
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(6)
    save_file({"images": torch.randint(0, 256, (len(labels), 1, 16, 16), dtype=torch.uint8), "labels": labels},
              prepared / "test.safetensors")
    params = small_params(paths={"base": str(generator_dir), "judge": str(judge_dir), "prepared": str(prepared)})
    params["gates"] = {"forget_acc_max": 1.0, "retain_ratio_min": 0.0, "kid_max_ratio": 1e9}
    return params


@pytest.fixture
def tiny_pipeline(tmp_path, tiny_generator_dir, write_params, monkeypatch):
    """A workspace (LETHE_WORKSPACE) and params file (LETHE_PARAMS) for the tiny pipeline."""
    params = tiny_pipeline_params(tmp_path, tiny_generator_dir)
    workspace = tmp_path / "ws"
    monkeypatch.setenv("LETHE_WORKSPACE", str(workspace))
    monkeypatch.setenv("LETHE_PARAMS", str(write_params(params)))
    return workspace, params


def run_cli(*args) -> int:
    from flows.cli import main

    return main(list(args))
