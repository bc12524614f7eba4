"""The frozen base generator: a class-conditional diffusers UNet with its noise schedule.

Saved and loaded as a diffusers-style folder (`unet/`, `scheduler/`, plus `lethe.json` naming the concepts),
so the weights are plain safetensors and the architecture is config, not code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn

from lethe.models.adapter_stack import AdapterStack, output_channels, run_adapted
from lethe.models.sampler import sample
from lethe.models.unet_split import Encoded, decode, decode_to, encode

META_NAME = "lethe.json"


def build_unet(
    image_size: int,
    channels: int,
    num_concepts: int,
    block_channels: list[int],
    layers_per_block: int,
    norm_groups: int,
) -> UNet2DModel:
    """A small class-conditional UNet without attention; class `num_concepts` is the null class."""
    depth = len(block_channels)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * depth,
        up_block_types=("UpBlock2D",) * depth,
        add_attention=False,
        num_class_embeds=num_concepts + 1,
        norm_num_groups=norm_groups,
    )


def build_scheduler(train_timesteps: int, beta_schedule: str) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=train_timesteps, beta_schedule=beta_schedule, clip_sample=True, prediction_type="epsilon"
    )


class Generator(nn.Module):
    """UNet + scheduler + concept names. `predict_noise` runs the UNet with an optional adapter stack.

    The concept interface both generator kinds share: `concepts`, `labels`, `paraphrased` (concepts with
    held-out wordings: none here, a class label has no paraphrase), `sample_concepts` and, for serving,
    `request_column` with `sample_requests`."""

    kind = "class-conditional"
    request_column = "concept"  # what a served request names
    paraphrased: list[str] = []

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, concepts: list[str]):
        super().__init__()
        if unet.config.num_class_embeds != len(concepts) + 1:
            raise ValueError(
                f"UNet has {unet.config.num_class_embeds} class embeddings, expected "
                f"{len(concepts) + 1} for {len(concepts)} concepts plus the null class"
            )
        self.unet = unet
        self.scheduler = scheduler
        self.concepts = list(concepts)

    @property
    def example_request(self) -> str:
        """A request this generator answers (a concept name), for examples and smoke checks."""
        return self.concepts[0]

    @property
    def null_label(self) -> int:
        return len(self.concepts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    def labels(self, concepts: list[str]) -> list[int]:
        unknown = [c for c in concepts if c not in self.concepts]
        if unknown:
            raise ValueError(f"unknown concepts {unknown}; this generator knows: {', '.join(self.concepts)}")
        return [self.concepts.index(c) for c in concepts]

    def sample_concepts(
        self,
        concepts: list[str],
        n: int,
        seed: int,
        steps: int,
        adapters: AdapterStack | None = None,
        guidance: float = 1.0,
        batch_size: int = 256,
        progress=None,
        held_out: bool = False,
    ):
        """n images per concept, concept-major, and their labels (indices into `concepts` of this generator),
        on the device the UNet is on."""
        if held_out:
            raise ValueError("a class-conditional generator has no held-out paraphrases to sample")
        return sample(self, concepts, n, seed, steps, adapters, guidance, batch_size, self.unet.device, progress)

    def sample_requests(self, requests: list[str], n: int, seed: int, steps: int, adapters, guidance, batch_size):
        """n images per served request (a concept name), as the pyfunc model answers it."""
        return self.sample_concepts(requests, n, seed, steps, adapters, guidance, batch_size)[0]

    @torch.no_grad()
    def feature_channels(self, target: str) -> int:
        """Channels of module `target`'s output, found by one dry forward pass."""
        x = torch.zeros(1, *self.image_shape, device=self.unet.device)
        zero = torch.zeros(1, dtype=torch.long, device=x.device)
        return output_channels(self.unet, target, lambda: self.unet(x, zero, class_labels=zero))

    def predict_noise(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        adapters: AdapterStack | None = None,
        record: tuple[str, ...] = (),
    ):
        """Noise prediction and the recorded adapter trajectories ({(adapter name, target): states})."""
        return run_adapted(adapters, self.unet, lambda: self.unet(x, t, class_labels=labels).sample, record)

    def encode(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, adapters: AdapterStack | None = None
    ) -> Encoded:
        """The encoder half of `predict_noise` (adapters on encoder modules apply; decoder ones wait)."""
        return run_adapted(adapters, self.unet, lambda: encode(self.unet, x, t, labels))[0]

    def decode(self, encoded: Encoded, adapters: AdapterStack | None = None, record: tuple[str, ...] = ()):
        """The decoder half: `decode(encode(x, t, y))` equals `predict_noise(x, t, y)`."""
        return run_adapted(adapters, self.unet, lambda: decode(self.unet, encoded), record)

    def decode_to(
        self, encoded: Encoded, stage: str, adapters: AdapterStack | None = None, record: tuple[str, ...] = ()
    ):
        """The decoder state after `stage`; `decode` of it finishes the pass (`models.unet_split.decode_to`)."""
        return run_adapted(adapters, self.unet, lambda: decode_to(self.unet, encoded, stage), record)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        (folder / META_NAME).write_text(json.dumps({"concepts": self.concepts}, indent=2) + "\n")
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Generator":
        folder = Path(folder)
        if not (folder / META_NAME).is_file():
            raise FileNotFoundError(
                f"{folder} is not a Lethe generator folder (no {META_NAME}); expected unet/, scheduler/ and lethe.json"
            )
        meta = json.loads((folder / META_NAME).read_text())
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, low_cpu_mem_usage=False)
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        generator = cls(unet, scheduler, meta["concepts"])
        generator.eval().requires_grad_(False)
        return generator
