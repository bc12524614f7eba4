"""Distil an adapted UNet into low-rank updates of its own Linear and Conv2d layers: a LoRA in PEFT's layout.

An exact export needs Lethe's adapter code at run time. A LoRA does not: diffusers loads it onto the plain
UNet (`load_lora_weights`), the common web UIs load it in kohya's key layout, and fused into the weights it
leaves a plain `UNet2DConditionModel`. It is an approximation, fitted here by self-distillation (FADE/SPARE):
on rows (x_t, t, text) the student, the frozen UNet plus LoRA, learns the output of the teacher, the same UNet
with the version's adapter stack. The rows are the version's own samples noised at random timesteps, with a
share on the empty prompt, because classifier-free guidance runs the adapters on that branch too.

The fit is scored like a consolidation: the share of the stack's change left unexplained,
|student - teacher|^2 / |teacher - base|^2 over the rows (1 = the base, 0 = the stack exactly).

Rows of the version's own prompts teach the LoRA what the version does where it is asked plainly; they say
nothing of an attacker's text features, where a LoRA that matches the stack on its rows can still draw the
concept. So the fit can run in rounds (AdvUnlearn's idea, as `models.attacked_rows` does for an adapter): after
each phase the caller attacks the student as it stands and returns rows conditioned on what the attack found,
with the stack's outputs there as targets; later batches draw a share from every such row kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from peft import LoraConfig
from torch import nn

from lethe.models.adapter_stack import AdapterStack, run_adapted

ADAPTER_NAME = "lethe"  # the PEFT adapter's name inside the student UNet


@dataclass
class DistilRows:
    """What the LoRA is fitted on: noised latents, timesteps and text features, with the teacher's outputs."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor
    targets: torch.Tensor  # the adapted UNet's outputs
    base: torch.Tensor  # the plain UNet's outputs (what "unexplained" is measured against)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, idx: torch.Tensor) -> "DistilRows":
        return DistilRows(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(parts: list["DistilRows"]) -> "DistilRows":
        return DistilRows(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(DistilRows)})


@dataclass
class DistilledLoRA:
    unet: nn.Module  # a copy of the UNet with the fitted LoRA (PEFT layers, adapter `ADAPTER_NAME`)
    modules: list[str]
    rank: int
    unexplained: float
    history: list[dict] = field(default_factory=list)

    @property
    def lora_params(self) -> int:
        return sum(p.numel() for n, p in self.unet.named_parameters() if "lora_" in n)


def lora_modules(unet: nn.Module, scopes: list[str]) -> list[str]:
    """Every Linear and Conv2d module inside the modules named in `scopes` (e.g. `mid_block`, `up_blocks.1`)."""
    found = [
        name
        for name, module in unet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(name == s or name.startswith(s + ".") for s in scopes)
    ]
    if not found:
        raise ValueError(f"no Linear or Conv2d layer inside {scopes}: nothing to put a LoRA on")
    return found


@torch.no_grad()
def teacher_rows(
    unet: nn.Module,
    adapters: AdapterStack,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    text: torch.Tensor,
    batch_size: int,
) -> DistilRows:
    """The adapted and the plain UNet's outputs on every row."""
    targets, base = [], []
    for i in range(0, len(latents), batch_size):
        x, t, c = latents[i : i + batch_size], timesteps[i : i + batch_size], text[i : i + batch_size]
        call = lambda: unet(x, t, encoder_hidden_states=c).sample  # noqa: E731
        targets.append(run_adapted(adapters, unet, call)[0])
        base.append(call())
    return DistilRows(latents, timesteps, text, torch.cat(targets), torch.cat(base))


def unexplained(student: nn.Module, rows: DistilRows, batch_size: int) -> float:
    err = change = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            sl = slice(i, i + batch_size)
            out = student(rows.latents[sl], rows.timesteps[sl], encoder_hidden_states=rows.text[sl]).sample
            err += float((out - rows.targets[sl]).pow(2).sum())
            change += float((rows.targets[sl] - rows.base[sl]).pow(2).sum())
    return err / max(change, 1e-12)


def fitting(student: nn.Module, params: list[nn.Parameter], on: bool) -> None:
    """Train mode with gradients on the LoRA's parameters only, or eval mode with every gradient off."""
    student.train(on).requires_grad_(False)
    for p in params:
        p.requires_grad_(on)


def distil_lora(
    unet: nn.Module,
    rows: DistilRows,
    modules: list[str],
    rank: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress=None,
    rounds: int = 0,
    attacked: Callable[[nn.Module, int], DistilRows] | None = None,
    attacked_share: float = 0.0,
) -> DistilledLoRA:
    """A copy of `unet` with a rank-`rank` LoRA on `modules`, fitted by Adam to `rows.targets`. With `rounds`,
    the steps are cut into `rounds` + 1 phases; after each phase but the last, `attacked(student, round)` gives
    rows found against the student as it stands (frozen while it is attacked), and every later batch draws
    `attacked_share` of its rows from all those kept. `unexplained` is scored on `rows` alone."""
    if rounds and attacked is None:
        raise ValueError("a fit in rounds needs `attacked`, which finds the rows of each round")
    if rounds and not rounds < steps:
        raise ValueError(f"{rounds} rounds need more than {rounds} steps to fall between, not {steps}")
    if rounds and not 1 <= round(batch_size * attacked_share) < batch_size:
        raise ValueError(
            f"attacked_share {attacked_share} of a batch of {batch_size} must give at least one attacked row "
            "and leave at least one of the version's own"
        )
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    student = copy.deepcopy(unet).requires_grad_(False)
    student.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, init_lora_weights=True), adapter_name=ADAPTER_NAME
    )
    params = [p for n, p in student.named_parameters() if "lora_" in n]
    optimiser = torch.optim.Adam(params, lr=lr)
    scale = (rows.targets - rows.base).pow(2).mean().clamp_min(1e-12)  # the loss reads as a share of the change
    phase_ends = {round(steps * (r + 1) / (rounds + 1)): r for r in range(rounds)}
    kept: list[DistilRows] = []
    extra: DistilRows | None = None
    history = []
    fitting(student, params, True)
    for step in range(1, steps + 1):
        n_extra = round(batch_size * attacked_share) if extra is not None else 0
        batch = rows[torch.randint(len(rows), (batch_size - n_extra,), generator=rng)]
        if n_extra:
            batch = DistilRows.cat([batch, extra[torch.randint(len(extra), (n_extra,), generator=rng)]])
        out = student(batch.latents, batch.timesteps, encoder_hidden_states=batch.text).sample
        loss = (out - batch.targets).pow(2).mean() / scale
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the LoRA fit diverged at step {step} of {steps}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps:
            history.append({"step": step, "loss": round(float(loss.detach()), 5)})
            if progress:
                progress(step, steps, history[-1])
        if step in phase_ends:
            fitting(student, params, False)  # attacked frozen, as it would be served
            kept.append(attacked(student, phase_ends[step]))
            extra = DistilRows.cat(kept)
            history.append({"step": step, "round": phase_ends[step] + 1, "attacked_rows": len(extra)})
            fitting(student, params, True)
    fitting(student, params, False)
    return DistilledLoRA(student, modules, rank, round(unexplained(student, rows, 256), 5), history)


def kohya_state_dict(peft_state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """PEFT/diffusers keys (`up_blocks.1.attentions.0.proj_in.lora_A.weight`) in kohya's layout
    (`lora_unet_up_blocks_1_attentions_0_proj_in.lora_down.weight`, `.lora_up.weight`, `.alpha`)."""
    out = {}
    for key, tensor in peft_state.items():
        module, _, part = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        kind = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}.get(part)
        if kind is None:
            raise ValueError(f"not a LoRA weight of PEFT's layout: {key}")
        out[f"{name}.{kind}"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out
