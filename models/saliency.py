"""Where to put a request's adapters: gradient saliency of the forget loss over candidate blocks (FADE).

For each candidate module, saliency = mean over forget rows of |<dL/dh, h>|, the first-order change of the
forget loss if the block's output were switched off. Blocks that carry the concept most score highest, and
the request's adapters go on the top k. It costs one forward and backward pass over a few batches.
"""

from __future__ import annotations

import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.losses import noise_matching


def block_saliency(
    generator: Generator,
    stack: AdapterStack | None,
    candidates: list[str],
    xt: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    target_eps: torch.Tensor,
) -> dict[str, float]:
    """Saliency of each candidate module's output for the loss noise_matching(student(xt, t, labels), target)."""
    modules = dict(generator.unet.named_modules())
    missing = [c for c in candidates if c not in modules]
    if missing:
        raise KeyError(f"saliency candidates not found in the UNet: {missing}")
    outputs: dict[str, torch.Tensor] = {}

    def keep(name, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"candidate {name!r} returns {type(output).__name__}; adapters need a tensor output")
        output.retain_grad()
        outputs[name] = output

    handles = [modules[c].register_forward_hook(lambda m, a, o, name=c: keep(name, m, a, o)) for c in candidates]
    try:
        with torch.enable_grad():
            x = xt.detach().clone().requires_grad_(True)  # the UNet is frozen: a leaf input builds the graph
            eps, _ = generator.predict_noise(x, t, labels, stack)
            noise_matching(eps, target_eps).backward()
    finally:
        for handle in handles:
            handle.remove()
    return {c: float((outputs[c].grad * outputs[c].detach()).flatten(1).sum(1).abs().mean()) for c in candidates}


def top_k(saliency: dict[str, float], k: int) -> list[str]:
    """The k most salient candidates, in the UNet's order (the order they were given)."""
    if not 1 <= k <= len(saliency):
        raise ValueError(f"k must be between 1 and {len(saliency)} candidates, got {k}")
    chosen = set(sorted(saliency, key=saliency.get, reverse=True)[:k])
    return [c for c in saliency if c in chosen]
