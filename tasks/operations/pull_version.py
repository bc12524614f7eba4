"""`lethe pull`: a registered version and the replay sets of its lineage, brought into this workspace from the
remote stores alone (the MLflow registry, the DVC remote), then checked: the model's samples against the
fingerprint recorded at registration, each replay set against the md5 its version recorded.

What a second machine does before it can sample, serve or continue from a version it did not make. Nothing
is taken from the local disk that the remote stores could not give back: a set already present is kept only
when its bytes hash to the recorded md5.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from lethe.tasks.operations.rollback import chain
from lethe.tasks.settings import FingerprintSettings, SamplingSettings
from lethe.tasks.steps.fingerprint import sample_fingerprint
from lethe.tasks.stores.registry import Registry
from lethe.tasks.stores.replay_sets import DatasetStore
from lethe.tasks.workspace import Workspace

SETS = ("forget", "retain")


class PullFailed(RuntimeError):
    """What came back does not match what was recorded; the message says which part."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def restore_set(store: DatasetStore, path: Path, md5: str) -> bool:
    """Bring one replay set back from the DVC remote by its recorded md5 (writing its .dvc file when the
    workspace has none); True when it was fetched, False when the bytes on disk already matched."""
    if path.is_file() and md5_of(path) == md5:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.is_file():
        dvc_file.write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": path.name}]}))
    store.restore(path)
    if md5_of(path) != md5:
        raise PullFailed(f"{path}: the remote gave bytes whose md5 is not the recorded {md5}")
    return True


def pull_version(
    registry: Registry,
    store: DatasetStore,
    workspace: Workspace,
    version: str | None,
    fingerprint: FingerprintSettings,
    sampling: SamplingSettings,
) -> dict:
    """Pull `version` (None: production) and the replay sets of every step in its lineage; returns what was
    pulled and the check. Raises KeyError for an unknown version, PullFailed when a check fails."""
    if version is None:
        production = registry.production()
        if production is None:
            raise KeyError("there is no production version yet")
        version = str(production.version)
    registered = registry.version(version)
    generator, adapters = registry.load(version)  # downloads the model into the workspace's model cache
    recorded = registered.tags.get("sample_sha256")
    if not recorded:
        raise PullFailed(f"version {version} has no recorded fingerprint to check against")
    sampled = sample_fingerprint(generator, adapters, fingerprint, sampling)
    if sampled != recorded:
        raise PullFailed(f"version {version}: samples hash to {sampled}, registration recorded {recorded}")
    sets = []
    for step in chain(registry, version):
        tags = registry.version(step).tags
        for name in SETS:
            if f"{name}_path" in tags:
                path = workspace.absolute(tags[f"{name}_path"])
                fetched = restore_set(store, path, tags[f"{name}_md5"])
                sets.append({"version": step, "set": name, "path": str(path), "fetched": fetched})
    return {"version": version, "fingerprint": recorded, "verified": True, "replay_sets": sets}
