"""Shared fixtures: a tiny untrained generator folder, small settings, an isolated workspace, the CLI bound to it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

# Prefect, MLflow and DVC: the same telemetry switches the entry point sets (flows/process.py).
from lethe.flows.process import LIBRARY_DEFAULTS

for _key, _value in LIBRARY_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
torch.set_flush_denormal(True)
# `make test` runs two pytest-xdist workers on CI's two cores: each worker, and every CLI process it starts, gets
# one torch thread, since two workers at torch's default of one thread per core would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# Prefect logs "Stopping temporary server" after pytest has closed its capture streams; without this, logging
# prints a "--- Logging error ---" traceback below the test summary.
logging.raiseExceptions = False

# Prefect and DVC bind their log handlers to sys.stdout/stderr when first imported: import them now, on the
# session's streams, not inside a test whose capsys stream is closed after it.
import dvc.repo  # noqa: E402,F401

import lethe.flows.unlearn  # noqa: E402,F401
from lethe.models.concepts import CONCEPTS  # noqa: E402
from lethe.models.generator import Generator, build_scheduler, build_unet  # noqa: E402
from lethe.models.judge import Judge  # noqa: E402
from lethe.models.ode_adapter import ODEConfig  # noqa: E402
from lethe.tasks.settings import Settings, load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"


def shipped_settings() -> Settings:
    """params.yaml as shipped (no environment overrides)."""
    return load_settings(PARAMS)


def ode_config(**changes) -> ODEConfig:
    """The shipped adapter's ODE config, with `changes`."""
    a = shipped_settings().adapter
    values = {
        "solver": a.solver,
        "horizon": a.horizon,
        "step_size": a.step_size,
        "hidden": a.hidden,
        "sampling_steps": a.sampling_steps,
        "time_dependent": a.time_dependent,
    }
    return ODEConfig(**(values | changes))


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    unet = build_unet(16, 1, len(CONCEPTS), block_channels=[16, 32], layers_per_block=1, norm_groups=8)
    return Generator(unet, build_scheduler(100, "squaredcos_cap_v2"), list(CONCEPTS)).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory) -> Path:
    return tiny_generator().save(tmp_path_factory.mktemp("tiny-generator"))


SMALL = {
    "sampling.steps": 4,
    "sampling.batch_size": 256,
    "distill.replay_per_concept": 4,
    "train.steps": 6,
    "train.batch_size": 8,
    "train.pool_rows": 64,
    "train.adversarial.attack_steps": 2,  # where a test or the ladder's recovery rung turns the rounds on
    "train.adversarial.attack_batch": 4,
    "train.adversarial.rows": 4,
    "train.adversarial.pool_rows": 16,
    "eval.samples_per_concept": 4,
    "eval.kid_subset": 10,
    "eval.device": "cpu",
    "adapter.targets": ["mid_block"],
    "adapter.candidates": ["mid_block", "up_blocks.0", "up_blocks.1"],
    "adapter.k": 1,
    "recovery.images": 8,
    "recovery.steps": 2,
    "recovery.batch_size": 4,
    "recovery.samples": 4,
    "consolidate.every": 0,  # on demand only, unless a test turns it on
    "consolidate.site": "up_blocks.1",  # the tiny UNet's last stage follows every candidate above
    "consolidate.replay_per_concept": 2,
    "consolidate.rows": 64,
    "consolidate.steps": 20,
    "consolidate.batch_size": 16,
    "consolidate.attack_rows": 8,  # the shipped two rounds of the attack against the fold, on few rows
}


def small_settings(**changes) -> Settings:
    """The shipped settings with budgets cut to seconds; `changes` are {"section.key": value} with the dots
    written as double underscores (adapter__k=2)."""
    return shipped_settings().override(SMALL | {k.replace("__", "."): v for k, v in changes.items()})


def write_settings(settings: Settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def tiny_pipeline_settings(root: Path, generator_dir: Path) -> Settings:
    """Settings for the real pipeline on a tiny untrained generator: a tiny random judge, fake prepared test and
    train splits (all under `root`), budgets of seconds and gates that always pass."""
    torch.manual_seed(0)
    judge_dir = Judge(list(CONCEPTS), 16, 1, 8, 16).eval().save(root / "judge")
    prepared = root / "prepared"
    prepared.mkdir(exist_ok=True)
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(6)
    for split in ("test", "train"):  # train: the recovery attacker's images
        save_file(
            {"images": torch.randint(0, 256, (len(labels), 1, 16, 16), dtype=torch.uint8), "labels": labels},
            prepared / f"{split}.safetensors",
        )
    return small_settings(
        paths__base=str(generator_dir),
        generator__folder=str(generator_dir),
        paths__judge=str(judge_dir),
        paths__prepared=str(prepared),
        paths__workspace=str(root / "ws"),
        gates__forget_acc_max=1.0,
        gates__retain_ratio_min=0.0,
        gates__kid_max_ratio=1e9,
        gates__recovery_acc_max=1.0,
    )


class Lethe:
    """The `lethe` CLI bound to one params file (the workspace is the file's `paths.workspace`)."""

    def __init__(self, params_file: Path):
        self.params_file = params_file

    @property
    def settings(self) -> Settings:
        return load_settings(self.params_file)

    @property
    def workspace(self) -> Path:
        return self.settings.paths.workspace

    def change(self, **changes) -> None:
        """Rewrite the params file with `changes` (as in small_settings)."""
        write_settings(self.settings.override({k.replace("__", "."): v for k, v in changes.items()}), self.params_file)

    def __call__(self, *args: str) -> int:
        from lethe.flows.cli import main

        return main(["--params", str(self.params_file), *args])


@pytest.fixture
def tiny_pipeline(tmp_path, tiny_generator_dir) -> Lethe:
    """The CLI on a workspace and params file of the tiny pipeline."""
    return Lethe(write_settings(tiny_pipeline_settings(tmp_path, tiny_generator_dir), tmp_path / "params.yaml"))


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback for the session (the Debian server binaries); its base URL."""
    import tempfile

    from tests.servers import postgres_server

    with postgres_server(Path(tempfile.mkdtemp(prefix="lethe-pg-"))) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_location(request, tmp_path) -> str:
    """A fresh, empty queue location on each engine: the same queue suite runs on both."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.sqlite")
    from tests.servers import create_database

    return create_database(request.getfixturevalue("postgres_url"), f"queue_{tmp_path.name.lower()}")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server, a real HTTP endpoint on loopback, for the session."""
    from tests.servers import s3_server

    with s3_server() as endpoint:
        yield endpoint


S3_BUCKET = "lethe-test"  # made empty for each test by `s3_bucket`


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A boto3 client of the S3 server, with the empty bucket S3_BUCKET. Credentials reach boto3 (and DVC)
    the way they reach a worker: from the environment, never from a settings file."""
    from lethe.tasks.stores.s3 import s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client, bucket = s3_client(s3_endpoint), S3_BUCKET
    client.create_bucket(Bucket=bucket)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)
