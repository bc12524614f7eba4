"""The UNet's forward pass cut in two: the encoder (embeddings, input conv, down blocks) and the decoder.

Unlearning adapters sit in the decoder and the base is frozen, so for a fixed noised input the encoder's
output never changes during training: it is computed once per training row and reused at every step that
draws the row, and each step runs only the decoder. The two halves reproduce `UNet2DModel.forward` exactly
for the configuration Lethe builds (no skip-conv blocks, positional time embedding, no input centring).
The decoder itself runs stage by stage (`decode_to`), so a training step can stop some rows at the deepest
adapter and carry only the others through the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

DECODER_PREFIXES = ("mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out")


@dataclass
class Encoded:
    """Everything the rest of the decoder needs: the current hidden state, the skip tensors not yet consumed,
    the embedding, and how many decoder stages (mid block, then up blocks) have already run."""

    sample: torch.Tensor
    res_samples: tuple[torch.Tensor, ...]
    emb: torch.Tensor
    stages_done: int = 0

    def __len__(self) -> int:
        return len(self.sample)

    def rows(self, index: torch.Tensor) -> "Encoded":
        return Encoded(self.sample[index], tuple(r[index] for r in self.res_samples), self.emb[index], self.stages_done)

    @staticmethod
    def cat(parts: list["Encoded"]) -> "Encoded":
        if len({p.stages_done for p in parts}) > 1:
            raise ValueError("cannot concatenate decoder states at different stages")
        return Encoded(
            torch.cat([p.sample for p in parts]),
            tuple(torch.cat(rs) for rs in zip(*(p.res_samples for p in parts))),
            torch.cat([p.emb for p in parts]),
            parts[0].stages_done,
        )


def splittable(unet) -> bool:
    """True when `encode`/`decode` reproduce this UNet's forward pass."""
    if not isinstance(unet, UNet2DModel):
        return False
    config = unet.config
    return (
        not config.center_input_sample
        and config.time_embedding_type == "positional"
        and not any(hasattr(b, "skip_conv") for b in list(unet.down_blocks) + list(unet.up_blocks))
    )


def in_decoder(target: str) -> bool:
    return target.split(".")[0] in DECODER_PREFIXES


def decoder_stage(target: str) -> str | None:
    """The decoder stage a module belongs to (`mid_block`, `up_blocks.<i>`), None for the output head."""
    parts = target.split(".")
    if parts[0] == "mid_block":
        return "mid_block"
    if parts[0] == "up_blocks" and len(parts) > 1:
        return f"up_blocks.{parts[1]}"
    return None


def last_stage(unet: UNet2DModel, targets) -> str | None:
    """The deepest decoder stage holding any of `targets`; None when one is in the head (or not in the decoder)."""
    order = stages(unet)
    found = [decoder_stage(t) for t in targets]
    if not found or any(s not in order for s in found):
        return None
    return max(found, key=order.index)


def encode(unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> Encoded:
    if not splittable(unet):
        raise TypeError("this UNet's forward pass cannot be split (skip-conv blocks, fourier time or centring)")
    t = t.reshape(-1).expand(len(x)) if t.numel() == 1 else t
    emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
    if unet.class_embedding is not None:
        emb = emb + unet.class_embedding(labels).to(dtype=unet.dtype)
    sample = unet.conv_in(x)
    res_samples = (sample,)
    for block in unet.down_blocks:
        sample, res = block(hidden_states=sample, temb=emb)
        res_samples += res
    return Encoded(sample, res_samples, emb)


def stages(unet: UNet2DModel) -> list[str]:
    """The decoder's stages in order: the mid block (when there is one), then every up block."""
    ups = [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    return (["mid_block"] if unet.mid_block is not None else []) + ups


def _run_stage(unet: UNet2DModel, name: str, state: Encoded) -> Encoded:
    if name == "mid_block":
        sample, res_samples = unet.mid_block(state.sample, state.emb), state.res_samples
    else:
        block = unet.up_blocks[int(name.split(".")[1])]
        n = len(block.resnets)
        sample, res_samples = block(state.sample, state.res_samples[-n:], state.emb), state.res_samples[:-n]
    return Encoded(sample, res_samples, state.emb, state.stages_done + 1)


def decode_to(unet: UNet2DModel, encoded: Encoded, stage: str) -> Encoded:
    """Run the decoder from where `encoded` stands through `stage` (a name from `stages`) and stop: training
    needs nothing past the deepest adapter for some rows, and the rest can be run for the others later."""
    order = stages(unet)
    if stage not in order:
        raise KeyError(f"{stage!r} is not a decoder stage of this UNet: {order}")
    state = encoded
    for name in order[encoded.stages_done : order.index(stage) + 1]:
        state = _run_stage(unet, name, state)
    return state


def decode(unet: UNet2DModel, encoded: Encoded) -> torch.Tensor:
    """The noise prediction, running the decoder stages `encoded` has not been through, then the head."""
    state = encoded
    for name in stages(unet)[encoded.stages_done :]:
        state = _run_stage(unet, name, state)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(state.sample)))
