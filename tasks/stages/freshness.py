"""`python -m lethe.tasks.stages.freshness`: fail when a shipped artefact no longer matches what made it.

`dvc status` prints what changed but exits 0 either way; this asks DVC for the same status and exits 1,
naming every stage whose code, data, settings or outputs differ from `dvc.lock`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def stale_stages(project: Path) -> dict:
    """{stage: what changed} for every stage of `project` that `dvc status` reports, empty when all match."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return repo.status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="the folder holding dvc.yaml (default: .)")
    args = parser.parse_args(argv)
    stale = stale_stages(Path(args.project))
    if not stale:
        print("models are fresh: every stage matches dvc.lock")
        return 0
    for stage, changes in stale.items():
        print(f"stale: {stage}: {changes}", file=sys.stderr)
    print(
        "the shipped artefacts no longer match their code, data or settings: run `dvc repro` (and commit "
        "dvc.lock and the artefacts), or undo the change",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
