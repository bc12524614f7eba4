"""Consolidation: fold an adapter stack into one adapter of constant size, one ODE field per site.

Every request adds an adapter, and every adapter runs at every denoising step, so sampling cost grows with the
number of requests. A stack's adapters act on a few modules ("sites": at most the adapter candidates), and at a
site they compose in the order they were added. Consolidation fits one new field per site that maps what the
site's module outputs to what the whole stack makes of it there. Inputs and targets are recorded from the stack
itself on one forward pass per row (teacher forcing): the "before" hook runs ahead of the stack's rewrite, the
"after" hook behind it. The fit then needs no further UNet pass, only the small fields on cached features.

One field per site is exact in form but costs one field pass per site. With `site` set to a whole decoder stage
that every site of the stack feeds (e.g. up_blocks.0 when all adapters sit in the mid block and up_blocks.0),
one field there maps the plain network's output at that stage to the stack's: one field pass in all.

The fit is scored per site as the share of the stack's change left unexplained:
|field(h_in) - h_out|^2 / |h_out - h_in|^2 over the rows (1 = the identity, 0 = the stack exactly).
Consolidated fields are trained on the grid they are deployed on, so no train/deploy gap needs a consistency
term; with more than one grid step the path's kinetic energy is penalised as for a request's adapter.

Rows of the stack's own samples say nothing of an attacker's conditioning: a fold that matches the stack on them
can lose the resistance that adversarially trained adapters had to the recovery attack. So the fit can run in
rounds (as `models.lora_distill` fits a LoRA): after each phase the caller attacks the fold as it stands and
returns the site features of rows conditioned on what the attack found, with the stack's rewrite there as the
targets; later batches draw a share of their rows from every such row kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.losses import trajectory_smoothness
from lethe.models.ode_adapter import ODEAdapter, ODEConfig
from lethe.models.unet_split import decoder_stage


@dataclass
class SiteFeatures:
    """Per site, the module's own output (`inputs`) and the stack's rewrite of it (`outputs`), row by row."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]

    @property
    def sites(self) -> list[str]:
        return list(self.inputs)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @staticmethod
    def cat(parts: list["SiteFeatures"]) -> "SiteFeatures":
        sites = parts[0].sites
        if any(p.sites != sites for p in parts):
            raise ValueError(f"features of different sites cannot be joined: {[p.sites for p in parts]}")
        return SiteFeatures(
            {s: torch.cat([p.inputs[s] for p in parts]) for s in sites},
            {s: torch.cat([p.outputs[s] for p in parts]) for s in sites},
        )


@dataclass
class Consolidated:
    stack: AdapterStack  # one adapter, named `name`, one field per site
    name: str
    unexplained: dict[str, float]  # per site, after the fit (on all rows)
    history: list[dict] = field(default_factory=list)

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.stack.adapters[self.name].parameters())


def active_sites(stack: AdapterStack) -> list[str]:
    """The modules the stack rewrites (enabled adapters at a non-zero intensity), in first-use order."""
    sites = [t for n, s in stack.slots.items() if s.enabled and s.intensity > 0 for t in s.targets]
    return list(dict.fromkeys(sites))


def _keep(store: dict, site: str, module, args, output):
    store.setdefault(site, []).append(output.detach().cpu())


def check_dominates(network: torch.nn.Module, stack: AdapterStack, site: str, run_rows) -> None:
    """Refuse a single consolidation `site` that some of the stack's effect could bypass. It must be a whole
    decoder stage (`mid_block` or `up_blocks.<i>`: the decoder is a chain whose only side inputs, the encoder's
    skips, no decoder adapter touches), every stack site must sit in the decoder, and the site must finish
    after every one of them on a forward pass."""
    if decoder_stage(site) != site:
        raise ValueError(f"consolidate.site {site!r} must be a whole decoder stage (mid_block or up_blocks.<i>)")
    sites = active_sites(stack)
    outside = [t for t in sites if decoder_stage(t) is None]
    if outside:
        raise ValueError(f"the stack rewrites {outside} outside the decoder stages: consolidate per site instead")
    modules = dict(network.named_modules())
    if site not in modules:
        raise KeyError(f"consolidate.site {site!r} is not a module of the network")
    order: list[str] = []
    handles = [modules[t].register_forward_hook(lambda m, a, o, t=t: order.append(t)) for t in {*sites, site}]
    try:
        run_rows(slice(0, 1))
    finally:
        for handle in handles:
            handle.remove()
    late = [t for t in sites if t != site and order.index(t) > order.index(site)]
    if late:
        raise ValueError(f"the stack rewrites {late} after consolidate.site {site!r}: pick a later decoder stage")


@torch.no_grad()
def record_sites(
    network: torch.nn.Module, stack: AdapterStack, run_rows, n: int, batch_size: int, site: str | None = None
) -> SiteFeatures:
    """Record the consolidation's sites while `run_rows(rows)` runs `network` (with no adapters of its own) on
    row slices of 0..n. Per site (`site` None: every active site of the stack), its output before the stack
    rewrites it and after, on one pass. With one `site` that the whole stack's effect passes through
    (`check_dominates`): its output in the plain network, and in the network with the stack."""
    if not active_sites(stack):
        raise ValueError("the stack rewrites nothing (no enabled adapter): there is nothing to consolidate")
    if site is not None:
        check_dominates(network, stack, site, run_rows)
        return _record_single(network, stack, site, run_rows, n, batch_size)
    sites = active_sites(stack)
    modules = dict(network.named_modules())
    before: dict[str, list] = {}
    after: dict[str, list] = {}
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        outer = [modules[s].register_forward_hook(partial(_keep, before, s)) for s in sites]
        try:
            with stack.attached(network):
                inner = [modules[s].register_forward_hook(partial(_keep, after, s)) for s in sites]
                try:
                    run_rows(rows)
                finally:
                    for handle in inner:
                        handle.remove()
        finally:
            for handle in outer:
                handle.remove()
        calls = {s: len(before[s]) for s in sites}
        if any(c != start // batch_size + 1 for c in calls.values()):
            raise RuntimeError(f"a site ran more or less than once per forward pass: {calls}")
    return SiteFeatures({s: torch.cat(before[s]) for s in sites}, {s: torch.cat(after[s]) for s in sites})


def _record_single(network, stack: AdapterStack, site: str, run_rows, n: int, batch_size: int) -> SiteFeatures:
    module = dict(network.named_modules())[site]
    before: dict[str, list] = {}
    after: dict[str, list] = {}
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        handle = module.register_forward_hook(partial(_keep, before, site))
        try:
            run_rows(rows)
        finally:
            handle.remove()
        with stack.attached(network):
            handle = module.register_forward_hook(partial(_keep, after, site))
            try:
                run_rows(rows)
            finally:
                handle.remove()
        if not len(before[site]) == len(after[site]) == start // batch_size + 1:
            raise RuntimeError(f"{site} ran more or less than once per forward pass")
    return SiteFeatures({site: torch.cat(before[site])}, {site: torch.cat(after[site])})


def unexplained(adapter: ODEAdapter, h_in: torch.Tensor, h_out: torch.Tensor, batch_size: int = 512) -> float:
    """Share of the stack's change at a site that `adapter` does not reproduce (0 = exact, 1 = identity)."""
    with torch.no_grad():
        err = change = 0.0
        for i in range(0, len(h_in), batch_size):
            x, y = h_in[i : i + batch_size], h_out[i : i + batch_size]
            err += float((adapter(x) - y).pow(2).sum())
            change += float((y - x).pow(2).sum())
    return err / max(change, 1e-12)


def fitted_stack(fields: dict[str, ODEAdapter], name: str) -> AdapterStack:
    """A one-adapter stack of `fields` (one per site) at intensity 1, shared, not copied."""
    stack = AdapterStack()
    stack.add(name, fields, intensity=1.0)
    return stack


def fit_consolidated(
    features: SiteFeatures,
    config: ODEConfig,
    name: str,
    steps: int,
    batch_size: int,
    lr: float,
    smooth: float,
    seed: int,
    progress=None,
    rounds: int = 0,
    attacked: Callable[[AdapterStack, int], SiteFeatures] | None = None,
    attacked_share: float = 0.0,
) -> Consolidated:
    """One field per site, fitted by Adam on `features` to the stack's rewrite (deployed at intensity 1). With
    `rounds`, the steps are cut into `rounds` + 1 phases; after each phase but the last, `attacked(fold, round)`
    gives site features of rows found against the fold as it stands (frozen while it is attacked), and every
    later batch draws `attacked_share` of its rows from all those kept. `unexplained` is scored on `features`."""
    if rounds and attacked is None:
        raise ValueError("a fit in rounds needs `attacked`, which finds the rows of each round")
    if rounds and not rounds < steps:
        raise ValueError(f"{rounds} rounds need more than {rounds} steps to fall between, not {steps}")
    if rounds and not 1 <= round(batch_size * attacked_share) < batch_size:
        raise ValueError(
            f"attacked_share {attacked_share} of a batch of {batch_size} must give at least one attacked row "
            "and leave at least one of the stack's own"
        )
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    fields = {s: ODEAdapter(features.inputs[s].shape[1], config) for s in features.sites}
    scale = {  # the mean squared change the stack makes at the site: the loss reads as a share of it
        s: (features.outputs[s] - features.inputs[s]).pow(2).mean().clamp_min(1e-12) for s in features.sites
    }
    params = [p for f in fields.values() for p in f.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    phase_ends = {round(steps * (r + 1) / (rounds + 1)): r for r in range(rounds)}
    kept: list[SiteFeatures] = []
    extra: SiteFeatures | None = None
    history = []
    grid = next(iter(fields.values())).grid()
    for step in range(1, steps + 1):
        n_extra = round(batch_size * attacked_share) if extra is not None else 0
        idx = torch.randint(len(features), (batch_size - n_extra,), generator=rng)
        extra_idx = torch.randint(len(extra), (n_extra,), generator=rng) if n_extra else None
        losses = {}
        for s, f in fields.items():
            x, y = features.inputs[s][idx], features.outputs[s][idx]
            if n_extra:
                x = torch.cat([x, extra.inputs[s][extra_idx]])
                y = torch.cat([y, extra.outputs[s][extra_idx]])
            states = f.trajectory(x)
            losses[s] = (states[-1] - y).pow(2).mean() / scale[s]
            if smooth and len(states) > 2:
                losses[s] = losses[s] + smooth * trajectory_smoothness(states, grid)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"consolidation diverged at step {step} of {steps}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps:
            history.append({"step": step, **{s: round(float(v.detach()), 5) for s, v in losses.items()}})
            if progress:
                progress(step, steps, history[-1])
        if step in phase_ends:
            for f in fields.values():
                f.requires_grad_(False)  # attacked frozen, as it would be served
            kept.append(attacked(fitted_stack(fields, name), phase_ends[step]))
            extra = SiteFeatures.cat(kept)
            history.append({"step": step, "round": phase_ends[step] + 1, "attacked_rows": len(extra)})
            for f in fields.values():
                f.requires_grad_(True)
    for f in fields.values():
        f.requires_grad_(False)
    stack = fitted_stack(fields, name)
    left = {s: round(unexplained(f, features.inputs[s], features.outputs[s]), 5) for s, f in fields.items()}
    return Consolidated(stack, name, left, history)
