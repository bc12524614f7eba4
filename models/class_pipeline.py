"""A diffusers pipeline for a class-conditional Lethe version: concept names in, images out.

An exact export of a class-conditional version copies this file to the folder's top level and names it in
`model_index.json` (`_class_name: ["class_pipeline", "LetheClassPipeline"]`), so
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it without Lethe installed: it imports
torch, numpy, PIL and diffusers only. It samples as `models.sampler` does (the noise of concept c under seed s
from its own stream, deterministic DDIM, guidance towards the null class, the same batches), so
`pipe(["trouser"], seed=3)` gives the bits `lethe sample --concept trouser --seed 3` gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput


def concept_noise(shape: tuple[int, ...], n: int, seed: int, label: int) -> torch.Tensor:
    """The starting noise of n samples of class `label` under `seed` (as `models.sampler.concept_noise`)."""
    stream = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(label))
    return torch.randn((n, *shape), generator=stream)


class LetheClassPipeline(DiffusionPipeline):
    """UNet (class labels; the last label is the null class of guidance) + DDIM scheduler + concept names."""

    def __init__(self, unet, scheduler, concepts: list[str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(concepts=list(concepts or []))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As diffusers saves a pipeline, plus this file, named in `model_index.json` so the copy loads again."""
        super().save_pretrained(save_directory, *args, **kwargs)
        here = Path(__file__)
        shutil.copyfile(here, Path(save_directory) / here.name)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [here.stem, type(self).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @property
    def concepts(self) -> list[str]:
        return list(self.config.concepts)

    def labels(self, concepts: list[str]) -> list[int]:
        unknown = [c for c in concepts if c not in self.concepts]
        if unknown:
            raise ValueError(f"unknown concepts {unknown}; this pipeline knows: {', '.join(self.concepts)}")
        return [self.concepts.index(c) for c in concepts]

    @torch.no_grad()
    def _denoise(self, labels: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        self.scheduler.set_timesteps(steps)
        x = noise
        for t in self.scheduler.timesteps:
            t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
            eps = self.unet(x, t_batch, class_labels=labels).sample
            if guidance != 1.0:
                null = torch.full_like(labels, len(self.concepts))
                eps_null = self.unet(x, t_batch, class_labels=null).sample
                eps = eps_null + guidance * (eps - eps_null)
            x = self.scheduler.step(eps, t, x).prev_sample
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def __call__(
        self,
        concepts: str | list[str],
        num_images_per_concept: int = 1,
        seed: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        batch_size: int = 256,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """n images per concept, concept-major. `output_type`: "pil", "np" (N x H x W x C in [0, 1]), "pt"
        (N x C x H x W in [0, 1]) or "raw" (N x C x H x W in [-1, 1], what Lethe's sampler returns)."""
        concepts = [concepts] if isinstance(concepts, str) else list(concepts)
        n = num_images_per_concept
        if n < 1:
            raise ValueError(f"num_images_per_concept must be >= 1, got {n}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
        if output_type not in ("pil", "np", "pt", "raw"):
            raise ValueError(f"output_type {output_type!r}: use pil, np, pt or raw")
        size = self.unet.config.sample_size
        shape = (self.unet.config.in_channels, size, size)
        label_list = self.labels(concepts)
        noise = torch.cat([concept_noise(shape, n, seed, label) for label in label_list])
        labels = torch.tensor(label_list).repeat_interleave(n)
        device = self.unet.device
        out = []
        for start in range(0, len(noise), batch_size):
            chunk = slice(start, start + batch_size)
            x = self._denoise(labels[chunk].to(device), noise[chunk].to(device), num_inference_steps, guidance_scale)
            out.append(x.cpu())
        images = torch.cat(out)
        if output_type != "raw":
            images = (images * 0.5 + 0.5).clamp(0.0, 1.0)
        if output_type in ("np", "pil"):
            images = images.permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            pixels = (images * 255).round().astype(np.uint8)
            images = [PIL.Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]
        return ImagePipelineOutput(images=images) if return_dict else (images,)
