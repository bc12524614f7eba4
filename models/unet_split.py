"""The UNet's forward pass cut in two: the encoder (embeddings, input conv, down blocks) and the decoder.

Unlearning adapters sit in the decoder and the base is frozen, so for a fixed noised input the encoder's
output never changes during training: it is computed once per training row and reused at every step that
draws the row, and each step runs only the decoder. The two halves reproduce `UNet2DModel.forward` exactly
for the configuration Lethe builds (no skip-conv blocks, positional time embedding, no input centring).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

DECODER_PREFIXES = ("mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out")


@dataclass
class Encoded:
    """Everything the decoder needs: the down path's output, its skip tensors and the embedding."""

    sample: torch.Tensor
    res_samples: tuple[torch.Tensor, ...]
    emb: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample)

    def rows(self, index: torch.Tensor) -> "Encoded":
        return Encoded(self.sample[index], tuple(r[index] for r in self.res_samples), self.emb[index])

    @staticmethod
    def cat(parts: list["Encoded"]) -> "Encoded":
        return Encoded(torch.cat([p.sample for p in parts]),
                       tuple(torch.cat(rs) for rs in zip(*(p.res_samples for p in parts))),
                       torch.cat([p.emb for p in parts]))


def splittable(unet) -> bool:
    """True when `encode`/`decode` reproduce this UNet's forward pass."""
    if not isinstance(unet, UNet2DModel):
        return False
    config = unet.config
    return (not config.center_input_sample and config.time_embedding_type == "positional"
            and not any(hasattr(b, "skip_conv") for b in list(unet.down_blocks) + list(unet.up_blocks)))


def in_decoder(target: str) -> bool:
    return target.split(".")[0] in DECODER_PREFIXES


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


def decode(unet: UNet2DModel, encoded: Encoded) -> torch.Tensor:
    sample, res_samples, emb = encoded.sample, encoded.res_samples, encoded.emb
    if unet.mid_block is not None:
        sample = unet.mid_block(sample, emb)
    for block in unet.up_blocks:
        n = len(block.resnets)
        sample = block(sample, res_samples[-n:], emb)
        res_samples = res_samples[:-n]
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
