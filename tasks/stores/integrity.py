"""Integrity of a registered version's files: the sha256 of every file of its generator and adapter stack,
recorded when the version is registered and checked before the version is used.

A version's `weights_sha256` tag is the sha256 of its manifest (one "sha256  path" line per file, sorted), so a
changed, missing or added file — a corrupt download, a tampered base, an adapter swapped in the cache — is
caught, and the message names the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST_TAG = "weights_sha256"
PARTS = ("generator", "adapters")  # the model folder's artefacts that hold weights and their configs


class IntegrityError(RuntimeError):
    """Files that differ from what the registry recorded; the message says which."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(root: Path, parts: tuple[str, ...] = PARTS) -> dict[str, str]:
    """{"generator/unet/diffusion_pytorch_model.safetensors": sha256, ...} of every file under root/part."""
    out = {}
    for part in parts:
        folder = root / part
        if not folder.is_dir():
            raise IntegrityError(f"{folder} is missing")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            out[str(path.relative_to(root))] = file_sha256(path)
    return out


def manifest_text(files: dict[str, str]) -> str:
    """The manifest as `sha256sum -c` reads it."""
    return "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))


def manifest_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(manifest_text(files).encode()).hexdigest()


def parse_manifest(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        sha, _, name = line.partition("  ")
        if len(sha) != 64 or not name:
            raise IntegrityError(f"not a sha256 manifest line: {line[:80]!r}")
        out[name] = sha
    return out


def verify(
    root: Path, recorded_digest: str, recorded: dict[str, str] | None, what: str, parts: tuple[str, ...] = PARTS
) -> None:
    """Raise IntegrityError unless the files under root/part hash to `recorded_digest`; `recorded` (the manifest
    registered with it, when at hand) names the files that differ."""
    found = manifest(root, parts)
    if manifest_digest(found) == recorded_digest:
        return
    if recorded is None or manifest_digest(recorded) != recorded_digest:
        raise IntegrityError(f"{what}: files under {root} do not match the recorded sha256 {recorded_digest[:12]}")
    changed = sorted(n for n in found.keys() & recorded.keys() if found[n] != recorded[n])
    missing = sorted(recorded.keys() - found.keys())
    added = sorted(found.keys() - recorded.keys())
    detail = "; ".join(
        f"{label}: {', '.join(names)}"
        for label, names in (("changed", changed), ("missing", missing), ("unexpected", added))
        if names
    )
    raise IntegrityError(f"{what}: files differ from the recorded sha256 ({detail})")
