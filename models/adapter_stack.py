"""An ordered stack of ODE adapters attached to named modules of a frozen network (peft-style).

Each unlearning step adds one adapter; the stack remembers, per adapter, the module it rewrites, its
intensity and whether it is enabled, so any step can be switched off or removed at run time. Hooks are
registered only for the duration of a call (`attached`), so the wrapped network is never left modified and
no trajectory is kept on a module between calls.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from models.ode_adapter import ODEAdapter, ODEConfig

CONFIG_NAME = "adapter_stack.json"
WEIGHTS_NAME = "adapter_stack.safetensors"


@dataclass
class AdapterSlot:
    """Where one adapter sits and how strongly it acts."""

    target: str
    intensity: float = 1.0
    enabled: bool = True
    label: str = ""


class AdapterStack(nn.Module):
    """Adapters applied in order; adapters on the same module compose in the order they were added."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleList()
        self.slots: list[AdapterSlot] = []

    def __len__(self) -> int:
        return len(self.adapters)

    def add(self, target: str, adapter: ODEAdapter, intensity: float = 1.0, label: str = "") -> int:
        """Append an adapter on module `target`; returns its index."""
        self.adapters.append(adapter)
        self.slots.append(AdapterSlot(target, float(intensity), True, label))
        return len(self.adapters) - 1

    def remove(self, index: int) -> None:
        del self.adapters[index]
        del self.slots[index]

    def enable(self, index: int, enabled: bool = True) -> None:
        self.slots[index].enabled = enabled

    def disable(self, index: int) -> None:
        self.enable(index, False)

    def set_intensity(self, index: int, intensity: float) -> None:
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        self.slots[index].intensity = float(intensity)

    def freeze(self, indices=None) -> None:
        """Stop gradients into the given adapters (all by default)."""
        for i in range(len(self)) if indices is None else indices:
            self.adapters[i].requires_grad_(False)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def sha256(self, indices=None) -> str:
        """Content hash of the given adapters' weights (all by default), stable across save/load."""
        digest = hashlib.sha256()
        for i in range(len(self)) if indices is None else indices:
            state = {k: v.detach().contiguous().cpu() for k, v in self.adapters[i].state_dict().items()}
            digest.update(save(state))
        return digest.hexdigest()

    def _rewrite(self, target: str, record: tuple[int, ...], trajectories: dict, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"module {target!r} returns {type(output).__name__}; adapters need a tensor output")
        for i, (adapter, slot) in enumerate(zip(self.adapters, self.slots)):
            if slot.target != target or not slot.enabled or slot.intensity == 0.0:
                continue
            if i in record:
                states = adapter.trajectory(output, slot.intensity)
                trajectories[i] = states
                output = states[-1]
            else:
                output = adapter(output, slot.intensity)
        return output

    @contextmanager
    def attached(self, network: nn.Module, record: tuple[int, ...] = ()):
        """Run `network` with the adapters applied; yields a dict that receives {index: trajectory} for `record`."""
        modules = dict(network.named_modules())
        missing = sorted({s.target for s in self.slots} - modules.keys())
        if missing:
            raise KeyError(f"adapter targets not found in the network: {missing}")
        trajectories: dict[int, torch.Tensor] = {}
        handles = [modules[t].register_forward_hook(partial(self._rewrite, t, tuple(record), trajectories))
                   for t in dict.fromkeys(s.target for s in self.slots)]
        try:
            yield trajectories
        finally:
            for handle in handles:
                handle.remove()

    def save(self, folder: str | Path) -> Path:
        """Config JSON + safetensors weights, like a diffusers model folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = [{"target": s.target, "intensity": s.intensity, "enabled": s.enabled, "label": s.label,
                   "channels": a.channels, "ode": a.config.to_dict()} for a, s in zip(self.adapters, self.slots)]
        (folder / CONFIG_NAME).write_text(json.dumps({"adapters": config}, indent=2) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AdapterStack":
        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text())
        stack = cls()
        for entry in config["adapters"]:
            adapter = ODEAdapter(entry["channels"], ODEConfig(**entry["ode"]))
            stack.add(entry["target"], adapter, entry["intensity"], entry.get("label", ""))
            stack.slots[-1].enabled = entry["enabled"]
        if len(stack):
            stack.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return stack
