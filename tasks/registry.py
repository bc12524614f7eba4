"""Register: versions of the generator in the MLflow Model Registry, with lineage tags and the
`production` alias.

Every version is a self-contained pyfunc model (base generator folder + its whole adapter stack), logged by
a run that holds the step's params, metrics and sample grid. The alias moves only after a version's tags are
complete and its gates passed, so production never points at a half-registered version.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.WARNING)  # after `import mlflow`, which sets its own level
# LetheModel is pickled by reference to tasks.pyfunc_model, which ships in the model's code/ folder
logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
from mlflow.exceptions import MlflowException  # noqa: E402
from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from models.adapter_stack import AdapterStack  # noqa: E402
from models.generator import Generator  # noqa: E402
from tasks.pyfunc_model import PIP_REQUIREMENTS, LetheModel  # noqa: E402
from tasks.settings import PROJECT_ROOT, Workspace  # noqa: E402

PRODUCTION = "production"
EXPERIMENT = "lethe"


def flatten(prefix: str, values: dict) -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(f"{name}.", value))
        else:
            out[name] = value
    return out


class Registry:
    def __init__(self, workspace: Workspace, model_name: str):
        self.workspace = workspace
        self.model_name = model_name
        mlflow.set_tracking_uri(workspace.mlflow_uri)
        mlflow.set_registry_uri(workspace.mlflow_uri)
        self.client = MlflowClient(workspace.mlflow_uri, workspace.mlflow_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = None if workspace.mlflow_uri.startswith("http") else workspace.mlflow_artifacts.as_uri()
            self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
        try:
            self.client.get_registered_model(model_name)
        except MlflowException:
            self.client.create_registered_model(
                model_name, description="Lethe: a base diffusion generator plus one ODE adapter per deletion request.")

    # -- reading ---------------------------------------------------------------------------------------------
    def versions(self) -> list:
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        return sorted(found, key=lambda v: int(v.version))

    def version(self, version: str | int):
        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException:
            raise KeyError(f"model {self.model_name} has no version {version}") from None

    def production(self):
        try:
            return self.client.get_model_version_by_alias(self.model_name, PRODUCTION)
        except MlflowException:
            return None

    def load(self, version: str | int) -> tuple[Generator, AdapterStack]:
        """Generator and adapter stack of a version (downloaded once into the workspace's model cache)."""
        folder = self.workspace.model_cache / f"v{version}"
        if not (folder / "artifacts").is_dir():
            tmp = Path(tempfile.mkdtemp(dir=self.workspace.root, prefix=".download-"))
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.model_name}/{version}",
                                                dst_path=str(tmp), tracking_uri=self.workspace.mlflow_uri)
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
        generator = Generator.from_folder(folder / "artifacts" / "generator")
        return generator, AdapterStack.load(folder / "artifacts" / "adapters")

    # -- writing ---------------------------------------------------------------------------------------------
    def register(self, generator_dir: Path, adapters: AdapterStack, sampling: dict, run_name: str,
                 params: dict, metrics: dict, tags: dict, description: str, files: dict[str, Path]) -> str:
        """Log a run with the model and create a registry version carrying `tags`; returns the version."""
        with tempfile.TemporaryDirectory() as tmp:
            adapters_dir = adapters.save(Path(tmp) / "adapters")
            generator_copy = shutil.copytree(generator_dir, Path(tmp) / "generator")  # artefacts keep their names
            sampling_file = Path(tmp) / "sampling.json"
            sampling_file.write_text(json.dumps(sampling))
            with mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name) as run:
                mlflow.log_params({k: str(v)[:500] for k, v in flatten("", params).items()})
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                mlflow.set_tags(tags)
                for name, path in files.items():
                    mlflow.log_artifact(str(path), artifact_path=name)
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=LetheModel(),
                    artifacts={"generator": str(generator_copy), "adapters": str(adapters_dir),
                               "sampling": str(sampling_file)},
                    code_paths=[str(PROJECT_ROOT / "models"), str(PROJECT_ROOT / "tasks")],
                    pip_requirements=PIP_REQUIREMENTS)
            version = self.client.create_model_version(self.model_name, info.model_uri, run_id=run.info.run_id,
                                                       tags={k: str(v) for k, v in tags.items()},
                                                       description=description)
        return str(version.version)

    def log_file(self, version: str, path: Path, artifact_path: str) -> None:
        """Attach a file to the run that registered `version` (e.g. the lineage plot once it is known)."""
        self.client.log_artifact(self.version(version).run_id, str(path), artifact_path)

    def set_tags(self, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, str(value))

    def promote(self, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, PRODUCTION, str(version))


@task(name="register-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register_version_task(registry: Registry, **kwargs) -> str:
    return registry.register(**kwargs)


@task(name="promote-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def promote_task(registry: Registry, version: str) -> None:
    registry.promote(version)
