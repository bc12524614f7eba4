"""Register: versions of the generator in the MLflow Model Registry, with lineage tags and the
`production` alias.

Every version is a self-contained pyfunc model (base generator folder + its whole adapter stack + sampling
settings, logged as models-from-code with `lethe.models` as its only code), logged by a run that holds the
step's settings, metrics, replay-set inputs and sample grid. The alias moves only after a version's tags are
complete and its gates passed, so production never points at a half-registered version.

Everything goes through one `MlflowClient` bound to the workspace's URI; nothing sets MLflow's process-wide
tracking URI. Registration is idempotent: a version carries a `registration_key` (request and attempt), so a
retry after a write that succeeded on the server finds that version instead of making a second one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

import lethe.models
from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.tasks.settings import RegistrySettings
from lethe.tasks.stores import serving_model
from lethe.tasks.stores.integrity import (
    MANIFEST_TAG,
    IntegrityError,
    manifest,
    manifest_digest,
    manifest_text,
    parse_manifest,
    verify,
)
from lethe.tasks.workspace import Workspace

PRODUCTION = "production"
REGISTRATION_KEY = "registration_key"
MANIFEST_FILE = "weights.sha256"  # the model folder's artifacts/weights.sha256: what MANIFEST_TAG hashes
BATCH_LIMIT = 100  # params per MLflow log_batch call
MODELS_CODE = Path(lethe.models.__file__).resolve().parent  # the lethe.models package, wherever it is installed
# What loading a version needs, pinned (constraints.txt); nothing resolved by a bare name.
PINS = {
    "torch": "2.13.0",
    "diffusers": "0.42.1",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "torchdiffeq": "0.2.5",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
    "pandas": "3.1.1",
    "peft": "0.21.2",
}
PIP_REQUIREMENTS = [f"{p}=={PINS[p]}" for p in PINS if p != "peft"]


LORA_MODEL_SUFFIX = "-lora"  # LoRA exports register as versions of `<registry.model_name>-lora`
# MLflow's diffusers flavour loads the base with diffusers and the LoRA with peft: what its environment needs.
LORA_REQUIREMENTS = [
    f"{p}=={PINS[p]}" for p in ("torch", "diffusers", "transformers", "tokenizers", "peft", "safetensors")
]


def flatten(prefix: str, values: dict) -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(f"{name}.", value))
        else:
            out[name] = value
    return out


def models_code_path(folder: Path) -> Path:
    """A copy of `lethe.models` laid out as `lethe/models/` (no `lethe/__init__.py`: a namespace portion), the
    model's only code path."""
    target = folder / "lethe" / "models"
    shutil.copytree(MODELS_CODE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder / "lethe"


def local_source(path: Path):
    """MLflow's dataset source for a local file (a replay set in the workspace's DVC repository)."""
    with warnings.catch_warnings():  # MLflow registers the local-file source twice and says so
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        return resolve_dataset_source(str(path))


class Registry:
    def __init__(self, workspace: Workspace, registry: RegistrySettings):
        self.workspace = workspace
        self.model_name = registry.model_name
        self.client = MlflowClient(tracking_uri=workspace.mlflow_uri, registry_uri=workspace.mlflow_uri)
        experiment = self.client.get_experiment_by_name(registry.experiment)
        if experiment is None:
            local = not workspace.mlflow_uri.startswith(("http://", "https://", "databricks"))
            location = workspace.mlflow_artifacts.as_uri() if local else None
            self.experiment_id = self.client.create_experiment(registry.experiment, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(
                self.model_name,
                description="Lethe: a base diffusion generator plus one ODE adapter per deletion request.",
            )

    # -- reading ---------------------------------------------------------------------------------------------
    def versions(self) -> list:
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        return sorted(found, key=lambda v: int(v.version))

    def version(self, version: str | int):
        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException:
            raise KeyError(f"model {self.model_name} has no version {version!r}") from None

    def production(self):
        try:
            return self.client.get_model_version_by_alias(self.model_name, PRODUCTION)
        except MlflowException:
            return None

    def by_key(self, key: str):
        """The version registered under `key`, or None."""
        found = self.client.search_model_versions(f"name = '{self.model_name}' and tags.{REGISTRATION_KEY} = '{key}'")
        return min(found, key=lambda v: int(v.version)) if found else None

    def pyfunc(self, version: str | int):
        """The version as MLflow loads it (downloaded once into the workspace's model cache), its weights
        checked against the sha256 registered with it first. A cached copy that fails the check is fetched
        again from the registry's store; a fresh copy that fails it is refused (IntegrityError)."""
        registered = self.version(version)
        folder = self.workspace.model_cache / f"v{registered.version}"
        if (folder / "MLmodel").is_file():
            try:
                self.verify(registered, folder)
            except IntegrityError:
                shutil.rmtree(folder)
        if not (folder / "MLmodel").is_file():
            self._download(registered, folder)
            self.verify(registered, folder)
        return mlflow.pyfunc.load_model(str(folder))

    def _download(self, registered, folder: Path) -> None:
        source = self.client.get_model_version_download_uri(self.model_name, str(registered.version))
        tmp = Path(tempfile.mkdtemp(dir=self.workspace.root, prefix=".download-"))
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp), tracking_uri=self.workspace.mlflow_uri
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        Path(local).replace(folder)
        shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def verify(registered, folder: Path) -> None:
        """The model folder's generator and adapter files hash to the version's registered manifest digest."""
        recorded = registered.tags.get(MANIFEST_TAG)
        if not recorded:
            raise IntegrityError(
                f"version {registered.version} has no {MANIFEST_TAG} tag: it was not registered by this Lethe, "
                "and its files cannot be checked"
            )
        listed = folder / "artifacts" / MANIFEST_FILE
        try:
            named = parse_manifest(listed.read_text())
        except (OSError, IntegrityError):
            named = None
        verify(folder / "artifacts", recorded, named, f"version {registered.version}")

    def load(self, version: str | int) -> tuple[Generator, AdapterStack]:
        """Generator and adapter stack of a version, through MLflow's pyfunc loader."""
        model = self.pyfunc(version).unwrap_python_model()
        return model.generator, model.adapters

    # -- writing ---------------------------------------------------------------------------------------------
    def register(
        self,
        key: str,
        generator: Generator,
        adapters: AdapterStack,
        sampling: dict,
        run_name: str,
        settings: dict,
        metrics: dict,
        tags: dict,
        description: str,
        files: dict[str, Path],
        datasets: dict[str, tuple[Path, str]] | None = None,
    ) -> str:
        """Log a run with the model and create a registry version carrying `tags`; returns the version.

        `key` makes it idempotent: an existing version with that key is returned as it is, and a finished
        run with that key is reused rather than logged again. `datasets` maps a context ("forget") to the
        path and digest of a replay set, logged as the run's dataset inputs."""
        existing = self.by_key(key)
        if existing is not None:
            return str(existing.version)
        self._abandon_unfinished_runs(key)
        run_id = self._finished_run(key) or self._log_run(
            key, generator, adapters, sampling, run_name, settings, metrics, tags, files, datasets or {}
        )
        digest = self.client.get_run(run_id).data.tags[MANIFEST_TAG]
        version_tags = {k: str(v) for k, v in tags.items()} | {REGISTRATION_KEY: key, MANIFEST_TAG: digest}
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        version = self.client.create_model_version(
            self.model_name, source, run_id=run_id, tags=version_tags, description=description
        )
        return str(version.version)

    def _abandon_unfinished_runs(self, key: str) -> None:
        """Runs of `key` left RUNNING by a killed process end FAILED (the batch lock says no one else logs)."""
        for run in self.client.search_runs(
            [self.experiment_id], f"tags.{REGISTRATION_KEY} = '{key}' and attributes.status = 'RUNNING'"
        ):
            self.client.set_terminated(run.info.run_id, "FAILED")

    def _finished_run(self, key: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.{REGISTRATION_KEY} = '{key}' and attributes.status = 'FINISHED'"
        )
        return runs[0].info.run_id if runs else None

    def _log_run(self, key, generator, adapters, sampling, run_name, settings, metrics, tags, files, datasets) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={REGISTRATION_KEY: key})
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
            params = [Param(k, str(v)[:6000]) for k, v in flatten("", settings).items()]
            for start in range(0, len(params), BATCH_LIMIT):  # MLflow takes at most 100 params per call
                self.client.log_batch(run_id, params=params[start : start + BATCH_LIMIT])
            self.client.log_dict(run_id, settings, "settings.json")
            if datasets:
                self.client.log_inputs(
                    run_id,
                    datasets=[
                        DatasetInput(
                            MetaDataset(local_source(path), name=context, digest=digest)._to_mlflow_entity(),
                            tags=[InputTag("mlflow.data.context", context)],
                        )
                        for context, (path, digest) in datasets.items()
                    ],
                )
            for name, path in files.items():
                self.client.log_artifact(run_id, str(path), name)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                generator.save(tmp / "generator")
                adapters.save(tmp / "adapters")
                files_sha256 = manifest(tmp)
                (tmp / MANIFEST_FILE).write_text(manifest_text(files_sha256))
                (tmp / "sampling.json").write_text(json.dumps(sampling))
                mlflow.pyfunc.save_model(
                    path=str(tmp / "model"),
                    python_model=serving_model.__file__,
                    artifacts={
                        "generator": str(tmp / "generator"),
                        "adapters": str(tmp / "adapters"),
                        "sampling": str(tmp / "sampling.json"),
                        "weights_manifest": str(tmp / MANIFEST_FILE),
                    },
                    code_paths=[str(models_code_path(tmp / "code"))],
                    signature=serving_model.SIGNATURES[generator.kind],
                    input_example=serving_model.input_example(generator.kind, generator.example_request),
                    pip_requirements=PIP_REQUIREMENTS,
                )
                self.client.log_artifacts(run_id, str(tmp / "model"), "model")
            self.client.set_tag(run_id, MANIFEST_TAG, manifest_digest(files_sha256))  # last: the run is complete
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def register_lora(self, weights: Path, base: Path, export: Path, tags: dict[str, str]) -> str:
        """Log a LoRA with MLflow's diffusers flavour (its pyfunc loads `base` with diffusers and the LoRA onto
        it) in a run holding the export's card and manifest, and register it as a version of
        `<model_name>-lora`; returns the version's `models:/` URI. The same weights logged twice give the
        version already registered."""
        name = self.model_name + LORA_MODEL_SUFFIX
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description="LoRA exports of Lethe versions (diffusers flavour).")
        key = f"lora-{tags['lethe_export_sha256']}"  # the weights, by hash: logged once, however often asked
        found = self.client.search_model_versions(f"name = '{name}' and tags.{REGISTRATION_KEY} = '{key}'")
        if found:
            return f"models:/{name}/{found[0].version}"
        self._abandon_unfinished_runs(key)  # a killed earlier try
        run_id = self._finished_run(key)
        if run_id is None:
            run_tags = tags | {REGISTRATION_KEY: key}
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"lora-of-v{tags['source_version']}", tags=run_tags
            ).info.run_id
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    mlflow.diffusers.save_model(
                        adapter_path=str(weights),
                        path=str(Path(tmp) / "model"),
                        base_model=str(base),
                        pip_requirements=LORA_REQUIREMENTS,
                        metadata={"lethe": tags},
                    )
                    self.client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
                for path in sorted(export.iterdir()):
                    if path.is_file() and path != weights:  # the card and the manifest, beside the model
                        self.client.log_artifact(run_id, str(path), "export")
            except BaseException:
                self.client.set_terminated(run_id, "FAILED")
                raise
            self.client.set_terminated(run_id, "FINISHED")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        version = self.client.create_model_version(name, source, run_id=run_id, tags=tags | {REGISTRATION_KEY: key})
        return f"models:/{name}/{version.version}"

    def log_file(self, version: str, path: Path, artifact_path: str) -> None:
        """Attach a file to the run that registered `version` (e.g. the lineage plot once it is known)."""
        self.client.log_artifact(self.version(version).run_id, str(path), artifact_path)

    def set_tags(self, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, str(value))

    def log_metric(self, version: str, key: str, value: float) -> None:
        """Add a metric to the run that registered `version` (e.g. the time its request waited for it)."""
        self.client.log_metric(self.version(version).run_id, key, value)

    def promote(self, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, PRODUCTION, str(version))


@task(name="register-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register_version_task(registry: Registry, **kwargs) -> str:
    return registry.register(**kwargs)


@task(name="promote-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def promote_task(registry: Registry, version: str) -> None:
    registry.promote(version)
