"""What every stage's command line shares: `--params FILE` (default ./params.yaml), settings loaded with the
environment's overrides, torch configured."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from lethe.tasks.runtime import configure_torch, quiet_libraries
from lethe.tasks.settings import Settings, load_settings


def stage_settings(description: str, argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="settings file (default ./params.yaml)")
    args = parser.parse_args(argv)
    settings = load_settings(args.params, os.environ)
    configure_torch(settings.runtime)
    quiet_libraries()
    return settings


def write_metrics(path: Path, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")


def write_curve(path: Path, rows: list[dict]) -> None:
    """A training curve as CSV (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["step", "loss"])
        writer.writeheader()
        writer.writerows(rows)
