"""Process-wide torch settings and device choice, applied once at the start of every entry point."""
from __future__ import annotations

import os

import torch


def configure_torch() -> None:
    # Denormals stalled a CPU training run at 100% CPU; flushing them costs nothing at this precision.
    torch.set_flush_denormal(True)
    threads = os.environ.get("LETHE_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def pick_device(name: str = "auto") -> torch.device:
    """'auto' = CUDA when available, else CPU; an explicit 'cuda' without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return device
