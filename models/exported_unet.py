"""A Lethe version's UNet as a diffusers custom component: the base UNet, with the version's adapter stack as
registered child modules (`lethe_stack`) that rewrite their target modules inside `forward`.

An exact export (`lethe export --format diffusers`) copies this file and its one sibling, `ode_adapter.py`,
into the folder's `unet/`; `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` then loads it
where Lethe is not installed, so this file imports torch, diffusers and its sibling only. The UNet's config
declares the adapters (`lethe_adapters`: names, targets, channels, intensities, ODE configs, in the order they
apply), and `state_dict`/`save_pretrained` carry their weights beside the base's.

Adapters compose exactly as `models.adapter_stack.AdapterStack` composes them (stack order; a disabled
adapter or intensity 0 leaves a module alone), with the same `ODEAdapter`, so an exported version samples the
same bits as Lethe does. Loading `unet/` with plain `UNet2DConditionModel.from_pretrained` instead ignores
`lethe_adapters` and serves the un-forgotten base.
"""

from __future__ import annotations

import inspect
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from .ode_adapter import ODEAdapter, ODEConfig

# The name diffusers records for these classes in model_index.json (it takes a class's __module__): the file's
# own name, so a pipeline saved again from a loaded export still names the file in `unet/`.
MODULE = __name__.rsplit(".", 1)[-1]
SOURCES = (f"{MODULE}.py", "ode_adapter.py")  # this file and every sibling it imports


def _key(target: str) -> str:
    """A module path as a ModuleDict key (which may not hold dots), as the adapter stack keys it."""
    return target.replace(".", "/")


class AdaptedUNet:
    """What both exported UNet kinds add to their diffusers base class: the adapters, applied in `forward`."""

    def _build_adapters(self, lethe_adapters) -> None:
        self.lethe_stack = nn.ModuleDict()
        for entry in lethe_adapters or []:
            self.lethe_stack[entry["name"]] = nn.ModuleDict(
                {_key(f["target"]): ODEAdapter(f["channels"], ODEConfig(**f["ode"])) for f in entry["fields"]}
            )

    def _rewrite(self, target: str, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"module {target!r} returns {type(output).__name__}; adapters need a tensor output")
        for entry in self.config.lethe_adapters or []:
            if not entry["enabled"] or entry["intensity"] == 0.0:
                continue
            if target in (f["target"] for f in entry["fields"]):
                output = self.lethe_stack[entry["name"]][_key(target)](output, entry["intensity"])
        return output

    @contextmanager
    def _adapters_attached(self):
        modules = dict(self.named_modules())
        entries = self.config.lethe_adapters or []
        targets = list(dict.fromkeys(f["target"] for e in entries for f in e["fields"]))
        handles = [modules[t].register_forward_hook(partial(self._rewrite, t)) for t in targets]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, *args, **kwargs):
        with self._adapters_attached():
            return super().forward(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The weights and config as diffusers writes them, plus the code that reads them."""
        super().save_pretrained(save_directory, *args, **kwargs)
        for name in SOURCES:
            shutil.copyfile(Path(__file__).with_name(name), Path(save_directory) / name)


def _signature(parent) -> inspect.Signature:
    """The parent's __init__ parameters plus `lethe_adapters`: diffusers builds a model from its config by reading
    the __init__ signature, so every key of the base's config must appear there."""
    params = [p for p in inspect.signature(parent.__init__).parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = inspect.Parameter("lethe_adapters", inspect.Parameter.KEYWORD_ONLY, default=None)
    return inspect.Signature([*params, extra])


class LetheUNet2DConditionModel(AdaptedUNet, UNet2DConditionModel):
    """A text-conditioned (Stable-Diffusion-layout) UNet with a Lethe adapter stack."""

    __module__ = MODULE

    def __init__(self, *args, lethe_adapters=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(lethe_adapters=list(lethe_adapters or []))
        self._build_adapters(lethe_adapters)

    __init__.__signature__ = _signature(UNet2DConditionModel)


class LetheUNet2DModel(AdaptedUNet, UNet2DModel):
    """A class-conditional UNet with a Lethe adapter stack."""

    __module__ = MODULE

    def __init__(self, *args, lethe_adapters=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(lethe_adapters=list(lethe_adapters or []))
        self._build_adapters(lethe_adapters)

    __init__.__signature__ = _signature(UNet2DModel)


EXPORTED = {UNet2DConditionModel: LetheUNet2DConditionModel, UNet2DModel: LetheUNet2DModel}


def adapted_unet(unet: nn.Module, adapters_config: list[dict], adapters_state: dict[str, torch.Tensor]):
    """The exported twin of `unet` with the adapters described by `adapters_config` (an adapter stack's
    `config()`) and their weights (`adapters_state`, keyed as the stack's `state_dict` under `adapters.`)."""
    kind = EXPORTED.get(type(unet))
    if kind is None:
        raise TypeError(f"cannot export a {type(unet).__name__}; exportable UNets: {[c.__name__ for c in EXPORTED]}")
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    model = kind(**config, lethe_adapters=adapters_config)
    prefix = "adapters."
    if any(not k.startswith(prefix) for k in adapters_state):
        raise ValueError("adapter weights must be keyed as an adapter stack's state_dict (`adapters.<name>...`)")
    state = {**unet.state_dict(), **{"lethe_stack." + k[len(prefix) :]: v for k, v in adapters_state.items()}}
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
