"""Named ODE adapters attached to modules of a frozen network (peft-style).

Each unlearning step adds one named adapter (the request's name, e.g. `request-3`) that rewrites one or
more modules with an ODE field each. The stack remembers, per name, its modules, its intensity and whether it
is enabled, so any step can be switched off or removed at run time; removing one never renames the others.
Adapters apply in the order they were added; on a shared module they compose in that order. Hooks are
registered only for the duration of a call (`attached`), so the wrapped network is never left modified and
no trajectory is kept on a module between calls.

Saved as `adapter_stack.json` (format version, names, targets, intensities, ODE configs) plus
`adapter_stack.safetensors`; format 1 (index-addressed, before names) still loads.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from lethe.models.ode_adapter import ODEAdapter, ODEConfig

CONFIG_NAME = "adapter_stack.json"
WEIGHTS_NAME = "adapter_stack.safetensors"
FORMAT_VERSION = 2
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")


@dataclass
class AdapterSlot:
    """Where one named adapter acts and how strongly."""

    targets: list[str]
    intensity: float = 1.0
    enabled: bool = True


def _key(target: str) -> str:
    """A module path as a ModuleDict key (which may not hold dots)."""
    return target.replace(".", "/")


class AdapterStack(nn.Module):
    """Named adapters, each a {module path: ODEAdapter} map, applied in the order they were added."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.slots: dict[str, AdapterSlot] = {}

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def _slot(self, name: str) -> AdapterSlot:
        if name not in self.slots:
            raise KeyError(f"no adapter named {name!r}; the stack holds {self.names or 'none'}")
        return self.slots[name]

    def add(self, name: str, fields: dict[str, ODEAdapter], intensity: float = 1.0, enabled: bool = True) -> str:
        """Append the adapter `name` with one ODE field per module path; returns the name."""
        if not NAME_PATTERN.match(name):
            raise ValueError(f"adapter name {name!r}: use letters, digits, '-' and '_' (at most 100)")
        if name in self.slots:
            raise ValueError(f"the stack already holds an adapter named {name!r}")
        if not fields:
            raise ValueError(f"adapter {name!r} needs at least one target module")
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        self.adapters[name] = nn.ModuleDict({_key(t): a for t, a in fields.items()})
        self.slots[name] = AdapterSlot(list(fields), float(intensity), bool(enabled))
        return name

    def field(self, name: str, target: str) -> ODEAdapter:
        self._slot(name)
        return self.adapters[name][_key(target)]

    def remove(self, name: str) -> None:
        self._slot(name)
        del self.adapters[name]
        del self.slots[name]

    def enable(self, name: str, enabled: bool = True) -> None:
        self._slot(name).enabled = enabled

    def disable(self, name: str) -> None:
        self.enable(name, False)

    def set_intensity(self, name: str, intensity: float) -> None:
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        self._slot(name).intensity = float(intensity)

    def freeze(self, names=None) -> None:
        """Stop gradients into the given adapters (all by default)."""
        for name in self.names if names is None else names:
            self._slot(name)
            self.adapters[name].requires_grad_(False)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def sha256(self, names=None) -> str:
        """Content hash of the given adapters (all by default): names, targets and weights, stable across
        save/load; an empty selection is refused rather than hashed to a constant."""
        names = self.names if names is None else list(names)
        if not names:
            raise ValueError("sha256 of no adapters: name at least one")
        digest = hashlib.sha256()
        for name in names:
            self._slot(name)
            digest.update(name.encode())
            for target in self.slots[name].targets:
                digest.update(target.encode())
                state = {k: v.detach().contiguous().cpu() for k, v in self.field(name, target).state_dict().items()}
                digest.update(save(state))
        return digest.hexdigest()

    def _rewrite(self, target: str, record: tuple[str, ...], trajectories: dict, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"module {target!r} returns {type(output).__name__}; adapters need a tensor output")
        for name, slot in self.slots.items():
            if target not in slot.targets or not slot.enabled or slot.intensity == 0.0:
                continue
            adapter = self.field(name, target)
            if name in record:
                states = adapter.trajectory(output, slot.intensity)
                trajectories[(name, target)] = states
                output = states[-1]
            else:
                output = adapter(output, slot.intensity)
        return output

    @contextmanager
    def attached(self, network: nn.Module, record: tuple[str, ...] = ()):
        """Run `network` with the adapters applied; yields a dict that receives {(name, target): trajectory}
        for the adapters named in `record`."""
        modules = dict(network.named_modules())
        targets = list(dict.fromkeys(t for s in self.slots.values() for t in s.targets))
        missing = sorted(set(targets) - modules.keys())
        if missing:
            raise KeyError(f"adapter targets not found in the network: {missing}")
        unknown = sorted(set(record) - self.slots.keys())
        if unknown:
            raise KeyError(f"cannot record unknown adapters {unknown}; the stack holds {self.names}")
        trajectories: dict[tuple[str, str], torch.Tensor] = {}
        handles = [
            modules[t].register_forward_hook(partial(self._rewrite, t, tuple(record), trajectories)) for t in targets
        ]
        try:
            yield trajectories
        finally:
            for handle in handles:
                handle.remove()

    def config(self) -> list[dict]:
        """Every adapter in order: name, intensity, enabled, and per target its channels and ODE config (what
        `save` writes and an exported UNet's config declares)."""
        return [
            {
                "name": name,
                "intensity": slot.intensity,
                "enabled": slot.enabled,
                "fields": [
                    {"target": t, "channels": self.field(name, t).channels, "ode": self.field(name, t).config.to_dict()}
                    for t in slot.targets
                ],
            }
            for name, slot in self.slots.items()
        ]

    def save(self, folder: str | Path) -> Path:
        """Config JSON + safetensors weights, like a diffusers model folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"format": FORMAT_VERSION, "adapters": self.config()}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AdapterStack":
        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text())
        version = config.get("format", 1)
        if version not in (1, FORMAT_VERSION):
            raise ValueError(
                f"{folder / CONFIG_NAME}: adapter stack format {version} is newer than this Lethe "
                f"reads ({FORMAT_VERSION})"
            )
        if version == 1:
            return cls._load_v1(folder, config)
        stack = cls()
        for entry in config["adapters"]:
            fields = {f["target"]: ODEAdapter(f["channels"], ODEConfig(**f["ode"])) for f in entry["fields"]}
            stack.add(entry["name"], fields, entry["intensity"], entry["enabled"])
        if len(stack):
            stack.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return stack

    @classmethod
    def _load_v1(cls, folder: Path, config: dict) -> "AdapterStack":
        """Format 1 listed adapters by index with a label per request: adapters sharing a label become one
        named adapter (the label made a name), in their original order."""
        weights = load_file(folder / WEIGHTS_NAME) if config["adapters"] else {}
        groups: dict[str, list[tuple[int, dict]]] = {}
        for i, entry in enumerate(config["adapters"]):
            label = re.sub(r"[^A-Za-z0-9_]+", "-", entry.get("label") or f"adapter-{i}").strip("-")[:100]
            groups.setdefault(label or f"adapter-{i}", []).append((i, entry))
        stack = cls()
        for name, entries in groups.items():
            fields = {}
            for i, entry in entries:
                adapter = ODEAdapter(entry["channels"], ODEConfig(**entry["ode"]))
                prefix = f"adapters.{i}."
                adapter.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
                fields[entry["target"]] = adapter
            stack.add(name, fields, entries[0][1]["intensity"], entries[0][1]["enabled"])
        return stack


def run_adapted(adapters: AdapterStack | None, network: nn.Module, call, record: tuple[str, ...] = ()):
    """`call()` with `adapters` applied to `network` (none or an empty stack: the plain network), and the
    trajectories of the adapters named in `record`: returns (output, {(name, target): states})."""
    if adapters is None or len(adapters) == 0:
        return call(), {}
    with adapters.attached(network, record) as trajectories:
        out = call()
    return out, trajectories


@torch.no_grad()
def output_channels(network: nn.Module, target: str, dry_pass) -> int:
    """Channels of module `target`'s output, seen by a hook during `dry_pass()` (one forward of `network`);
    adapters can only rewrite a module whose output is a tensor."""
    modules = dict(network.named_modules())
    if target not in modules:
        raise KeyError(f"no module named {target!r} in the network")
    seen = {}
    handle = modules[target].register_forward_hook(lambda module, args, output: seen.update(output=output))
    try:
        dry_pass()
    finally:
        handle.remove()
    if not isinstance(seen["output"], torch.Tensor):
        raise TypeError(f"module {target!r} returns {type(seen['output']).__name__}; adapters need a tensor")
    return int(seen["output"].shape[1])
