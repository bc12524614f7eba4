"""Replay sets versioned with DVC: one folder per request attempt, one .dvc file per set, pushed to a remote.

The workspace's `datasets/` folder is a DVC repository without git (`dvc init --no-scm`): .dvc files are
never overwritten once a version records them (a retried request gets a new attempt folder; an attempt
resumed after a crash rewrites only sets that no version recorded), so every hash recorded in MLflow stays
restorable with `dvc pull`, byte for byte, from the remote (a local folder by default, S3 by configuration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import save_file

REMOTE_NAME = "storage"


@dataclass(frozen=True)
class DatasetRef:
    """A versioned set: its path in the DVC repository, its .dvc file and the content hash."""

    path: Path
    dvc_file: Path
    md5: str
    size: int

    def relative_path(self, root: Path) -> str:
        """The set's path relative to the DVC repository (what tags record, so a moved workspace still works)."""
        return str(self.path.relative_to(root))


class DatasetStore:
    """`remote`: a folder or an s3://BUCKET/PREFIX URL; `endpoint`: the S3-compatible endpoint of an s3://
    remote (None = AWS's own). Credentials come from boto3's chain (environment, AWS configuration), never
    from here, so none is written into the repository's config."""

    def __init__(self, root: str | Path, remote: str, endpoint: str | None = None):
        self.root = Path(root)
        self.remote = remote
        self.endpoint = endpoint

    def _repo(self):
        from dvc.repo import Repo

        if not (self.root / ".dvc").is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            Repo.init(str(self.root), no_scm=True).close()
        repo = Repo(str(self.root))
        with repo.config.edit() as conf:  # idempotent: keeps the remote in line with the workspace settings
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
            conf["core"]["remote"] = REMOTE_NAME
            conf["remote"][REMOTE_NAME] = {"url": self.remote}
            if self.endpoint and self.remote.startswith("s3://"):
                conf["remote"][REMOTE_NAME]["endpointurl"] = self.endpoint
        return repo

    def folder(self, request_id: int, attempt: int) -> Path:
        return self.root / f"request-{request_id:05d}" / f"attempt-{attempt}"

    def save(self, request_id: int, attempt: int, name: str, tensors: dict[str, torch.Tensor]) -> DatasetRef:
        """Write a set atomically, `dvc add` it and push it to the remote."""
        empty = [k for k, v in tensors.items() if v.numel() == 0]
        if not tensors or empty:
            raise ValueError(
                f"request {request_id}: the {name} replay set is empty ({', '.join(empty) or 'no tensors'})"
            )
        folder = self.folder(request_id, attempt)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        tmp.replace(path)
        with self._repo() as repo:
            repo.add([str(path)])
            repo.push(targets=[str(path)])
        return self.ref(path)

    def ref(self, path: Path) -> DatasetRef:
        dvc_file = path.with_name(path.name + ".dvc")
        out = yaml.safe_load(dvc_file.read_text())["outs"][0]
        return DatasetRef(path, dvc_file, out["md5"], int(out["size"]))

    def restore(self, path: Path) -> Path:
        """Bring a set back from the remote (after the file or the cache was lost)."""
        with self._repo() as repo:
            repo.pull(targets=[str(path)], force=True)
        return path


@task(name="version-replay-sets", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def version_replay_sets(store: DatasetStore, request_id: int, attempt: int, forget: dict, retain: dict):
    """Both sets of a request, each `dvc add`-ed and pushed; returns (forget ref, retain ref). Retried: a remote
    that is briefly unreachable should not fail the request, and add/push of the same bytes is idempotent."""
    return store.save(request_id, attempt, "forget", forget), store.save(request_id, attempt, "retain", retain)
