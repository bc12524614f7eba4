"""The workspace: the one folder that holds all run-time state of a Lethe installation.

Queue, MLflow store and artefacts, DVC repository, cache and remote, evaluation cache and the batch lock
live under `paths.workspace`; `storage.mlflow_uri` and `storage.dvc_remote` move the registry and the
replay-set remote elsewhere (an MLflow server, S3). Everything recorded in a tag is relative to the root,
so a moved workspace still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lethe.tasks.settings import Settings


@dataclass(frozen=True)
class Workspace:
    root: Path
    mlflow_uri: str
    dvc_remote: str
    queue_url: str | None = None  # a shared queue (PostgreSQL); None = queue_db

    @classmethod
    def open(cls, settings: Settings) -> "Workspace":
        root = settings.paths.workspace.resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            root,
            settings.storage.mlflow_uri or f"sqlite:///{root / 'mlflow.db'}",
            settings.storage.dvc_remote or str(root / "dvc-remote"),
            settings.storage.queue_url,
        )

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.sqlite"

    @property
    def queue_location(self) -> str:
        """The queue every step and every machine of this installation uses."""
        return self.queue_url or str(self.queue_db)

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def dvc_root(self) -> Path:
        return self.root / "datasets"

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    @property
    def model_cache(self) -> Path:
        return self.root / "model-cache"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def lock(self) -> Path:
        return self.root / "batch.lock"

    def relative(self, path: Path) -> str:
        """`path` as recorded in tags: relative to the root when inside it."""
        path = Path(path).resolve()
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def absolute(self, recorded: str) -> Path:
        """A path as recorded by `relative`, back in this workspace."""
        path = Path(recorded)
        return path if path.is_absolute() else self.root / path
