"""Torch's process-wide settings and the device choice, applied once by the entry point."""

from __future__ import annotations

import logging

import torch

from lethe.tasks.settings import RuntimeSettings

# Libraries that narrate routine work at INFO ("Initialized DVC repository", MLflow's pickling notes).
QUIET_LOGGERS = {
    "dvc": logging.WARNING,
    "mlflow": logging.WARNING,
    "mlflow.pyfunc": logging.ERROR,
    "alembic": logging.WARNING,
}


def quiet_libraries() -> None:
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def configure_torch(runtime: RuntimeSettings) -> None:
    # Denormals stalled a CPU training run at 100% CPU; flushing them costs nothing at this precision.
    torch.set_flush_denormal(True)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)


def pick_device(name: str) -> torch.device:
    """'auto' = CUDA when available, else CPU; an explicit 'cuda' without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return device
