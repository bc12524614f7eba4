"""Where things live: the project's params.yaml and the workspace folder that holds all run-time state.

The workspace (queue, MLflow store and artefacts, DVC repository, cache and remote, evaluation cache) defaults
to `workspace/` in the project and moves with LETHE_WORKSPACE or the CLI's --workspace; params come from
`params.yaml` or LETHE_PARAMS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def load_params(path: str | Path | None = None) -> dict:
    path = Path(path or os.environ.get("LETHE_PARAMS") or PROJECT_ROOT / "params.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> "Workspace":
        root = Path(path or os.environ.get("LETHE_WORKSPACE") or PROJECT_ROOT / "workspace").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.sqlite"

    @property
    def mlflow_uri(self) -> str:
        """LETHE_MLFLOW_URI (e.g. an MLflow server) or a SQLite store in the workspace. Not MLFLOW_TRACKING_URI:
        mlflow.set_tracking_uri() writes that variable, so it would carry one workspace's store into the next."""
        return os.environ.get("LETHE_MLFLOW_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def dvc_root(self) -> Path:
        return self.root / "datasets"

    @property
    def dvc_remote(self) -> str:
        return os.environ.get("LETHE_DVC_REMOTE") or str(self.root / "dvc-remote")

    @property
    def runs(self) -> Path:
        """Scratch space of in-flight requests (adapters being trained, sample grids)."""
        return self.root / "runs"

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    @property
    def model_cache(self) -> Path:
        return self.root / "model-cache"

    @property
    def lock(self) -> Path:
        return self.root / "batch.lock"


def project_path(relative: str | Path) -> Path:
    """A path from params.yaml, relative to the project root unless absolute."""
    path = Path(relative)
    return path if path.is_absolute() else PROJECT_ROOT / path
